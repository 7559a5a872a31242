"""The supervisor's workers: started, judged ready or not, restarted with backoff when they die.

A worker is *ready* when its App says so (``app.ready``: every server of it
ready, consumers included), within ``start_timeout`` of its start; one that
is not is stopped. A worker that dies while the pool runs is replaced after
a jittered backoff (:func:`quiesce.backoff.backoff_delay`). Workers that exit
before they were ready, ``max(N, 3)`` times in a row, end the pool: the
supervisor stops with exit 1 and the cause in one line. Workers started by a
reload (*candidates*) are judged by the reload, not counted here: a reload of
broken code keeps the old workers and must not end the service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from quiesce.backoff import backoff_delay
from quiesce.workers.child import Spawn, Worker, exit_text

__all__ = ["RESTART_CAP", "RESTART_FIRST", "STABLE_AFTER", "Pool"]

logger = logging.getLogger("quiesce.workers")

#: The first restart's delay (times a random factor of 0.5 to 1), doubled for each death in a row.
RESTART_FIRST = 0.1
#: The longest delay before a restart.
RESTART_CAP = 5.0
#: A worker that served this long before dying starts the backoff afresh.
STABLE_AFTER = 10.0


class Pool:
    """``size`` workers started from ``spawn``; see the module's docstring.

    ``on_ready(worker)`` is called as each becomes ready, ``on_exit(worker)``
    as each is reaped, ``on_fatal(line)`` once the starts fail ``limit`` times
    in a row.
    """

    def __init__(
        self,
        spawn: Spawn,
        *,
        size: int,
        start_timeout: float,
        stop_timeout: float,
        kill_margin: float,
        reports: str | None,
        on_ready: Callable[[Worker], None],
        on_exit: Callable[[Worker], None],
        on_fatal: Callable[[str], None],
    ) -> None:
        self.spawn = spawn
        self.size = size
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.kill_margin = kill_margin
        self.reports = reports
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._on_fatal = on_fatal
        #: The workers not yet reaped, by pid.
        self.workers: dict[int, Worker] = {}
        #: The reload generation new workers belong to.
        self.generation = 0
        #: Set by :meth:`close`: no restart from now on, every exit is expected.
        self.closing = False
        self._failed_starts = 0
        self._deaths = 0
        self._watchers: set[asyncio.Task[Any]] = set()
        self._restarts: set[asyncio.Task[Any]] = set()

    @property
    def limit(self) -> int:
        """Failed starts in a row that end the pool."""
        return max(self.size, 3)

    def live(self) -> list[Worker]:
        """Every worker not yet reaped, oldest first."""
        return list(self.workers.values())

    def serving(self) -> int:
        """How many workers are ready and not told to stop."""
        return sum(1 for w in self.workers.values() if w.ready.is_set() and not w.stopping)

    async def add(self, *, candidate: bool = False) -> Worker | None:
        """Start a worker of the current generation; None if no process could be started."""
        try:
            worker = await Worker.start(self.spawn, self.generation)
        except OSError as exc:
            why = f"cannot start a worker process: {exc}"
            logger.error("%s", why)
            if not candidate:
                self._failed(why)
            return None
        worker.candidate = candidate
        self.workers[worker.pid] = worker
        self._track(self._watch(worker), self._watchers)
        return worker

    async def until_ready(self, worker: Worker) -> str | None:
        """None once ``worker`` is ready; else why not (it exited, or start_timeout passed)."""
        waiter: asyncio.Future[Any] = asyncio.ensure_future(worker.ready.wait())
        budget = self.start_timeout - (time.monotonic() - worker.started_at)
        try:
            waits: set[asyncio.Future[Any]] = {waiter, worker.exited}
            await asyncio.wait(waits, timeout=max(budget, 0.0), return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
        if worker.ready.is_set():
            return None
        if worker.exited.done():
            why = worker.error or (worker.report(self.reports) or {}).get("error")
            ended = f"{exit_text(worker.exited.result())} before it was ready"
            return f"{ended}: {why}" if why else ended
        return f"not ready within start_timeout={self.start_timeout:g}s"

    def close(self) -> None:
        """No more starts or restarts: the stop takes the workers from here."""
        self.closing = True
        for task in self._restarts:
            task.cancel()

    # -- internals --------------------------------------------------------------

    def _track(self, coro: Coroutine[Any, Any, None], into: set[asyncio.Task[Any]]) -> None:
        task = asyncio.create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)

    async def _watch(self, worker: Worker) -> None:
        why = await self.until_ready(worker)
        if why is None:
            self._ready(worker)
        elif worker.running and not worker.stopping:
            logger.warning("worker %d %s: stopping it", worker.pid, why)
            await worker.stop_within(self.stop_timeout, self.kill_margin)
        code = await worker.exited
        self.workers.pop(worker.pid, None)
        worker.report(self.reports)  # read now, kept: the stop's report gathers it
        self._on_exit(worker)
        if not (self.closing or worker.stopping or worker.candidate):
            self._died(worker, code, why)

    def _ready(self, worker: Worker) -> None:
        self._failed_starts = 0
        if worker.candidate:
            logger.info("worker %d ready (new)", worker.pid)
        else:
            logger.info("worker %d ready (%d of %d)", worker.pid, self.serving(), self.size)
        self._on_ready(worker)

    def _died(self, worker: Worker, code: int, why: str | None) -> None:
        if why is not None:  # it never was ready
            if self._failed(f"worker {worker.pid} {why}"):
                return
            delay = backoff_delay(self._failed_starts, first=RESTART_FIRST, cap=RESTART_CAP)
            logger.warning("worker %d %s; another starts in %.2fs", worker.pid, why, delay)
        else:
            ready_at = worker.ready_at or time.monotonic()
            stable = time.monotonic() - ready_at >= STABLE_AFTER
            self._deaths = 1 if stable else self._deaths + 1
            delay = backoff_delay(self._deaths, first=RESTART_FIRST, cap=RESTART_CAP)
            logger.warning(
                "worker %d %s while serving; another starts in %.2fs",
                worker.pid,
                exit_text(code),
                delay,
            )
        self._track(self._restart(delay), self._restarts)

    def _failed(self, why: str) -> bool:
        """Count a failed start; True once they are too many in a row (the pool ends)."""
        self._failed_starts += 1
        if self._failed_starts < self.limit:
            return False
        self._on_fatal(f"{self._failed_starts} worker starts failed in a row; the last: {why}")
        return True

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self.closing:
            await self.add()
