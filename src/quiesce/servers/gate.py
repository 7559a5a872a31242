"""The ASGI app uvicorn runs for an :class:`~quiesce.HTTPServer`: probes first, then the user's.

Health and readiness are answered by two path comparisons before the app sees
the request; while draining, every response carries ``Connection: close``; a
request cut by the stop timeout ends quietly (a WebSocket with 1001); each
request is an arrival for an adaptive drain, probes aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from quiesce.lifecycle import Lifecycle

__all__ = [
    "CUT_GRACE",
    "LIFESPAN_SHUTDOWN_RESERVE",
    "ASGIApp",
    "Gate",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "lifespan_reserve",
]

# The stop's two bounds every engine shares (uvicorn's and granian's).
#: Seconds of the stop timeout kept for the ASGI lifespan shutdown when requests use up the
#: rest (at most a tenth of it); when they finish early the lifespan gets all that is left.
LIFESPAN_SHUTDOWN_RESERVE = 0.1
#: After cutting requests at the timeout, how long their handlers get to unwind.
CUT_GRACE = 0.1

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def lifespan_reserve(timeout: float, has_lifespan: bool) -> float:
    """What of a stop's ``timeout`` requests leave to the lifespan shutdown (none without one)."""
    return min(LIFESPAN_SHUTDOWN_RESERVE, timeout / 10) if has_lifespan else 0.0


class Gate:
    """The ASGI app uvicorn runs: health and readiness first, then the user's app."""

    __slots__ = (
        "app",
        "arrived",
        "cutting",
        "draining",
        "health_path",
        "lifecycle",
        "lifespan_error",
        "ready_path",
    )

    def __init__(self, app: ASGIApp, health_path: str | None, ready_path: str | None) -> None:
        self.app = app
        self.health_path = health_path
        self.ready_path = ready_path
        self.lifecycle: Lifecycle | None = None
        #: The lifecycle's ``arrived`` while it counts this server's traffic, else None.
        self.arrived: Callable[[], None] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the previous run: serving, not draining."""
        self.draining = False
        self.cutting = False
        #: What the app's lifespan raised: uvicorn keeps only its text (Starlette's case).
        self.lifespan_error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a probe, or run the user's app (closing connections while draining)."""
        try:
            await self.route(scope, receive, send)
        except asyncio.CancelledError:
            if not self.cutting:
                raise
            await self.end_cut(scope, send)
        except Exception as exc:
            if scope["type"] == "lifespan":
                self.lifespan_error = exc
            raise

    def route(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What answers this request: a probe, or the user's app (its own coroutine, no layer).

        An engine that awaits it itself (granian's) handles a cut as :meth:`__call__` does:
        a ``CancelledError`` while :attr:`cutting` goes to :meth:`end_cut`.
        """
        if scope["type"] == "http":
            path = scope["path"]
            if path == self.ready_path:
                return self._probe(send, ready=True)
            if path == self.health_path:
                return self._probe(send, ready=False)
            if self.draining:
                send = _closing(send)
        if (arrived := self.arrived) is not None and scope["type"] != "lifespan":
            arrived()
        return self.app(scope, receive, send)

    async def end_cut(self, scope: Scope, send: Send) -> None:
        """End a request cut by the stop timeout quietly; a WebSocket with 1001."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if scope["type"] == "websocket":
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1001, "reason": "stopping"})

    async def _probe(self, send: Send, *, ready: bool) -> None:
        lifecycle = self.lifecycle
        state = lifecycle.state.value if lifecycle is not None else "running"
        if ready:
            waiting = [] if lifecycle is None else lifecycle.not_ready()
            serving = lifecycle is None or lifecycle.is_serving
            ok = not self.draining and serving and not waiting
            body: dict[str, object] = {"status": "ready" if ok else "not ready", "state": state}
            if waiting:
                body["not_ready"] = waiting
        else:
            ok = True
            body = {"status": "alive", "state": state}
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200 if ok else 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _closing(send: Send) -> Send:
    """Wrap ``send`` so the response carries ``Connection: close`` (only while draining)."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"connection" for name, _ in headers):
                headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await send(message)

    return closing_send
