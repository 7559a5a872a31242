"""quiesce: a lifecycle runtime for asyncio services.

Start servers concurrently, register once they are really listening, and on a
signal take the instance out of traffic and stop it in bounded, ordered,
reported phases so that no accepted request, message or background job is
lost. See :class:`App`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quiesce.app import App, AppInfo
from quiesce.consumers import Consumer, Message
from quiesce.drain import Drain
from quiesce.errors import (
    ConfigError,
    DependencyCycleError,
    QuiesceError,
    ServerExitedError,
    StartError,
    StoppedError,
)
from quiesce.lifecycle import Lifecycle, LifecycleEvent
from quiesce.phases import Outcome, PhaseRecord, State
from quiesce.registry import Discovery, Instance, Registry, RegistryError, Watch
from quiesce.report import ExitCode, Report
from quiesce.resources import Resource
from quiesce.servers import BaseServer, Server
from quiesce.tasks import Guard, PeriodicJob

if TYPE_CHECKING:
    from quiesce.consumers.rabbitmq import RabbitMQConsumer
    from quiesce.consumers.redis_stream import RedisStreamConsumer
    from quiesce.gateway.server import GatewayServer
    from quiesce.servers.admin import AdminServer
    from quiesce.servers.asgi import HTTPServer
    from quiesce.servers.grpc import GRPCServer

# Adapters import their framework (uvicorn, grpc, redis, aio-pika...): loaded on first
# use, so that `import quiesce` stays light and works without the optional extras.
_LAZY = {
    "AdminServer": "quiesce.servers.admin",
    "GatewayServer": "quiesce.gateway.server",
    "HTTPServer": "quiesce.servers.asgi",
    "RabbitMQConsumer": "quiesce.consumers.rabbitmq",
    "RedisStreamConsumer": "quiesce.consumers.redis_stream",
    "GRPCServer": "quiesce.servers.grpc",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quiesce' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
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

__version__ = "0.1.0"
