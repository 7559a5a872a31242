"""The control of one run: its stop requests, the signals behind them, its last resorts.

The first request (a signal, ``App.stop()`` from any thread, a server that
exits on its own) begins the stop; a later stop signal forces the end. Each
sequence races them:

- the start runs until a stop request aborts it, except that once the app
  serves, its ``after_start`` hooks finish (so that ``before_stop`` never meets
  a half-run ``after_start``); a force still cuts them;
- the stop runs until it ends or a force cuts it; the forced end then gets
  what is left.

A process owner (``App.run()``) also gets a watchdog over each sequence: a loop
that is stuck cannot honour any of these bounds, so a thread ends the process
(:mod:`quiesce.watchdog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any

from quiesce.phases import State
from quiesce.report import ExitCode
from quiesce.signals import SignalScope
from quiesce.watchdog import Watchdog

__all__ = ["FORCE_GRACE", "FORCE_WATCHDOG", "WATCHDOG_MARGIN", "StopControl"]

logger = logging.getLogger("quiesce.lifecycle")

#: After a second signal, how long the forced end may take to stop servers and close resources.
FORCE_GRACE = 0.3
#: After a second signal, how long a blocked loop has before the watchdog exits the process.
FORCE_WATCHDOG = 1.0
#: How long the watchdog waits past ``start_timeout`` or ``stop_timeout`` for a stuck loop
#: before it exits the process.
WATCHDOG_MARGIN = 2.0


class StopControl:
    """Whether, and why, the stop was requested or forced; the races of start and stop.

    ``state()`` says where the app is, for the log lines. Requests made before
    :meth:`bind` (``App.stop()`` before the run) take effect once it is called.
    """

    def __init__(self, state: Callable[[], State], on_reason: Callable[[str], None]) -> None:
        self._state = state
        self._on_reason = on_reason
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requested: asyncio.Event | None = None
        self._forced: asyncio.Event | None = None
        self._early: str | None = None
        self._watchdog: Watchdog | None = None

    def bind(self, watchdog: Watchdog | None = None) -> None:
        """Attach to the running loop; apply a request made before it ran.

        ``watchdog`` (a process owner's) ends the process when a sequence overruns.
        """
        self._loop = asyncio.get_running_loop()
        self._requested = asyncio.Event()
        self._forced = asyncio.Event()
        self._watchdog = watchdog
        if self._early is not None:
            self.request_stop(self._early)

    def stop(self, reason: str) -> None:
        """Request the stop from any thread (``App.stop()``); idempotent."""
        loop = self._loop
        if loop is None or _in_loop_thread(loop):
            self.request_stop(reason)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
            loop.call_soon_threadsafe(self.request_stop, reason)

    def signals(self, signals: Iterable[int], *, until_exit: bool) -> SignalScope:
        """Own ``signals``: the first requests the stop, later ones force it."""
        assert self._loop is not None, "bind() first"
        return SignalScope(
            self._loop,
            signals,
            on_stop=lambda sig: self.request_stop(f"signal {sig}"),
            on_force=self.request_force,
            on_force_signal=self._arm_force_watchdog,
            until_exit=until_exit,
        )

    @contextlib.contextmanager
    def bounded(self, budget: float, code: int, why: str) -> Iterator[None]:
        """A process owner's last resort over a sequence of ``budget`` seconds.

        Past the budget and :data:`WATCHDOG_MARGIN`, the watchdog exits with ``code``.
        """
        timer = None
        if self._watchdog is not None:
            timer = self._watchdog.arm(budget + WATCHDOG_MARGIN, code, why)
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()

    def _arm_force_watchdog(self) -> threading.Timer | None:
        # In the signal handler: a force must end the process even when the loop is
        # blocked and cannot act on it.
        if self._watchdog is None:
            return None
        code = ExitCode.FAILED if self._state() is State.STARTING else ExitCode.INCOMPLETE
        return self._watchdog.arm(FORCE_WATCHDOG, code, "the loop did not honour the forced stop")

    def request_stop(self, reason: str) -> None:
        """Begin the stop (once; later requests change nothing). Call it in the loop."""
        if self._requested is None:
            self._early = self._early or reason
            return
        if self._requested.is_set():
            return
        self._on_reason(reason)
        logger.info("stop requested reason=%r state=%s", reason, self._state().value)
        self._requested.set()

    def request_force(self, reason: str) -> None:
        """End the stop at once. Call it in the loop."""
        assert self._forced is not None, "bind() first"
        logger.warning("stop forced reason=%r state=%s", reason, self._state().value)
        self._forced.set()

    async def wait(self) -> None:
        """Until the stop is requested."""
        assert self._requested is not None, "bind() first"
        await self._requested.wait()

    async def run_start(self, start: Coroutine[Any, Any, None], *, grace: float) -> None:
        """Run ``start`` until it ends or a request aborts it.

        An aborted start is cancelled and gets ``grace`` seconds to unwind.

        Raises:
            Exception: what ``start`` raised (a defect: its steps keep their errors).

        """
        assert self._requested is not None, "bind() first"
        assert self._forced is not None, "bind() first"
        task = asyncio.create_task(start, name="quiesce start")
        if not await _first(task, self._requested) and self._state() is State.RUNNING:
            # Serving already: the after_start hooks finish (each bounded by its timeout).
            await _first(task, self._forced)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=grace)
        elif (exc := task.exception()) is not None:
            raise exc

    async def run_stop(
        self, stop: Coroutine[Any, Any, None], force_end: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``stop``; a force cancels it and runs ``force_end`` instead.

        Raises:
            Exception: what ``stop`` raised (a defect: its steps keep their errors).

        """
        assert self._forced is not None, "bind() first"
        task = asyncio.create_task(stop, name="quiesce stop")
        if await _first(task, self._forced):
            if (exc := task.exception()) is not None:
                raise exc
            return
        task.cancel()
        await asyncio.wait({task}, timeout=FORCE_GRACE / 3)
        await force_end()


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _first(task: asyncio.Task[None], event: asyncio.Event) -> bool:
    """Wait for ``task`` or ``event``; True if the task ended first (or both did)."""
    waiter = asyncio.create_task(event.wait(), name="quiesce request")
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return task.done()
