"""The ASGI lifespan protocol, run by quiesce itself for engines that leave it to the host.

uvicorn runs its own (``HTTPServer``'s default engine); granian's embedded
server logs a failed startup's message (a whole traceback, from Starlette) on
its own logger and then raises, so the granian engine runs the lifespan here:
quiet, bounded by the caller, and its failure one line.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from quiesce.servers.gate import ASGIApp, Message

__all__ = ["Lifespan", "LifespanFailed"]


class LifespanFailed(Exception):
    """The app's lifespan startup or shutdown failed; the message says why, in one line."""


class Lifespan:
    """``lifespan.startup`` and ``lifespan.shutdown`` for ``app`` (``mode``: auto, on, off).

    In ``auto`` mode an app that raises before it read the startup (one that does
    not speak the lifespan protocol) runs without it; in either mode so does one
    that returns without answering (it ignores the lifespan scope), as with uvicorn.
    """

    def __init__(self, app: ASGIApp, mode: str = "auto") -> None:
        self.app = app
        self.mode = mode
        #: The lifespan scope's state, shared with every request's scope (ASGI's ``state``).
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._answers: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        """Whether a startup succeeded and the shutdown is still to run."""
        return self._task is not None

    async def startup(self) -> None:
        """Run the app's startup.

        Raises:
            LifespanFailed: the app answered ``lifespan.startup.failed`` or raised
                (in ``on`` mode; in ``auto`` mode only after it began the startup).

        """
        if self.mode == "off":
            return
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        self._task = task = asyncio.create_task(self._run(scope), name="quiesce lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        try:
            answer = await self._answer()
        except asyncio.CancelledError:  # the start's budget ran out: no startup left behind
            self._task = None
            task.cancel()
            raise
        if answer["type"] == "lifespan.startup.complete":
            return
        self._task = None
        if answer["type"] == "returned":
            return  # an app that ignores the lifespan scope
        if answer["type"] == "error" and self.mode == "auto" and not answer["began"]:
            return  # an app without lifespan support
        raise LifespanFailed(_last_line(answer.get("message")) or "startup failed")

    async def shutdown(self) -> None:
        """Run the app's shutdown (the caller bounds it; a cancelled one is cancelled here too).

        Raises:
            LifespanFailed: the app answered ``lifespan.shutdown.failed`` or raised.

        """
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await self._inbox.put({"type": "lifespan.shutdown"})
            answer = await self._answer()
        except asyncio.CancelledError:
            task.cancel()
            raise
        if answer["type"] != "lifespan.shutdown.complete":
            raise LifespanFailed(_last_line(answer.get("message")) or "shutdown failed")
        with contextlib.suppress(Exception):
            await task

    @property
    def error(self) -> BaseException | None:
        """What the app raised in its lifespan, if it did (for a DEBUG traceback)."""
        return self._error

    async def _answer(self) -> Message:
        return await self._answers.get()

    async def _run(self, scope: Message) -> None:
        began = False

        async def receive() -> Message:
            nonlocal began
            message = await self._inbox.get()
            began = True
            return message

        async def send(message: Message) -> None:
            await self._answers.put(message)

        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self._error = exc
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self._answers.put({"type": "error", "message": text, "began": began})
        else:
            await self._answers.put({"type": "returned"})


def _last_line(message: object) -> str:
    # Starlette sends the whole traceback as the message: its last line says what.
    lines = str(message or "").strip().splitlines()
    return lines[-1] if lines else ""
