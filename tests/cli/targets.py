"""What ``quiesce run`` serves in the subprocess tests: each body names the target that made it.

``quiesce run cli.targets:<attr>`` with ``tests/`` on ``PYTHONPATH`` (or
``cli/targets.py:<attr>`` from ``tests/``).
"""

from __future__ import annotations

from typing import Any

from quiesce import App
from quiesce.servers.asgi import HTTPServer

Scope = dict[str, Any]


def hello(body: bytes) -> Any:
    """A bare ASGI app that answers every HTTP request with ``body``."""

    async def asgi(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return asgi


def app_around(body: bytes, name: str) -> App:
    """An App of its own: port 0 and a name, so that ``--port`` overriding it is seen."""
    return App(name=name, servers=[HTTPServer(hello(body), port=0)])


asgi = hello(b"asgi")
app = app_around(b"app", "cli-app")


def make_app() -> App:
    return app_around(b"sync factory app", "made-sync")


def make_asgi() -> Any:
    return hello(b"sync factory asgi")


async def amake_app() -> App:
    return app_around(b"async factory app", "made-async")


async def amake_asgi() -> Any:
    return hello(b"async factory asgi")


def broken_factory() -> Any:
    raise RuntimeError("the database is not there")
