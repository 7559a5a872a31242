"""A ``grpc.aio.Server`` built at import time, then served by the app (issue 7, item 14)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import grpc

from conftest import Service
from scenarios.grpc_service import SLEEP
from scenarios.test_grpc_signals import until

MODULE = "tests.scenarios.grpc_module_level"
Start = Callable[..., Service]


async def test_grpc_server_built_at_import_serves_under_app_run_and_exits_0_on_sigterm(
    service: Start,
) -> None:
    svc = service(MODULE, "run")
    target = await until(r"EVENT ready grpc://(127\.0\.0\.1:\d+) ", svc)
    async with grpc.aio.insecure_channel(target) as channel:
        assert await channel.unary_unary(SLEEP, None, None)(b"0", timeout=5) == b"0"
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    assert svc.phase("stop_servers")["outcome"] == "ok"


def test_grpc_server_built_at_import_under_asyncio_run_exits_2_naming_the_factory_form(
    service: Start,
) -> None:
    # asyncio.run() makes a loop of its own, which can never run that server.
    svc = service(MODULE, "asyncio_run")
    assert svc.wait() == 2, svc.output
    error = svc.report()["error"]
    assert error.startswith("server 'grpc': this grpc.aio.Server was built outside the app's")
    assert "GRPCServer(make_server)" in error
    assert "\n" not in error
    assert "Traceback" not in svc.output
    assert "EVENT ready" not in svc.output, "refused before anything served"
