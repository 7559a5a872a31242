"""The public API is pinned, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import quiesce

EXPECTED = [
    "AdminServer",
    "App",
    "AppInfo",
    "BaseServer",
    "ConfigError",
    "Consumer",
    "DependencyCycleError",
    "Discovery",
    "Drain",
    "ExitCode",
    "GRPCServer",
    "GatewayServer",
    "Guard",
    "HTTPServer",
    "Instance",
    "Lifecycle",
    "LifecycleEvent",
    "Message",
    "Outcome",
    "PeriodicJob",
    "PhaseRecord",
    "QuiesceError",
    "RabbitMQConsumer",
    "RedisStreamConsumer",
    "Registry",
    "RegistryError",
    "Report",
    "Resource",
    "Server",
    "ServerExitedError",
    "StartError",
    "State",
    "StoppedError",
    "Watch",
]


def test_all_is_pinned_and_sorted() -> None:
    assert quiesce.__all__ == EXPECTED
    assert sorted(quiesce.__all__) == quiesce.__all__


def test_every_exported_name_resolves() -> None:
    for name in quiesce.__all__:
        assert getattr(quiesce, name) is not None


def test_import_quiesce_imports_no_optional_framework() -> None:
    code = (
        "import sys, quiesce; "
        "heavy = [m for m in ('grpc', 'uvicorn', 'httpx', 'prometheus_client', 'starlette', "
        "'redis', 'aio_pika', 'asyncpg') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = quiesce.NoSuchThing
