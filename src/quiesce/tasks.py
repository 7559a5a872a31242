"""Tracked work: ``spawn`` and ``guard`` (Kitex's GoroutineLock, with a deadline) and ``every``.

Only tracked work is waited for at stop; other tasks of the loop are not
(aiohttp tried waiting for every task and reverted it). Each task remembers
where it was spawned, so the report can name what the deadline cut
(:mod:`quiesce.stacks` says how), and a task that fails is logged when it fails
and kept as an error of the stop. Each job of ``every`` (a
:class:`~quiesce.periodic.PeriodicJob`) runs as a tracked task.

Whether a spawn is accepted is decided on the loop, where the task phase
closes: once it has closed (idle, or its cut has begun) every spawn raises
:class:`StoppedError`, so no accepted task outlives the report unnamed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from types import CoroutineType, TracebackType
from typing import Any, TypeVar

from quiesce.errors import StoppedError, describe
from quiesce.hooks import callable_name
from quiesce.periodic import PeriodicJob
from quiesce.phases import Outcome, PhaseRecord
from quiesce.stacks import Entry, Site, describe_task, task_stack, tracked_wrapper, where

__all__ = ["Guard", "PeriodicJob", "TaskTracker", "describe_task", "task_stack"]

logger = logging.getLogger("quiesce.lifecycle")
T = TypeVar("T")

#: How long spawn() from another thread waits for the loop to create the task.
HANDOFF_TIMEOUT = 5.0
#: Fewest tracked tasks before finished ones are swept away.
SWEEP_MIN = 64
#: Failed tasks kept in full for the report; beyond that they are only counted
#: (each keeps its traceback and frames alive).
FAILURES_KEPT = 20


class TaskTracker:
    """The tracked tasks, guards and periodic jobs of one app."""

    def __init__(self) -> None:
        # task -> (spawn site, coroutine): cheap to take, formatted when reported.
        self._tasks: dict[asyncio.Task[Any], Entry] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._guards: dict[int, str] = {}
        self._guard_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._jobs: list[PeriodicJob] = []
        self._jobs_stop: asyncio.Event | None = None
        self._jobs_started = False
        # Finished tasks are dropped in amortised sweeps instead of a done-callback per
        # task: a callback costs a loop handle per task, half again a bare create_task.
        # Failures are caught by a wrapper coroutine (bench/spawn.py: ~1.45x create_task,
        # against ~1.25x without it and ~1.7x with a done-callback).
        self._sweep_at = SWEEP_MIN
        self._failures: list[tuple[str, BaseException]] = []
        self._failed = 0
        #: Tracked tasks that raised, over the whole run (periodic jobs' runs not included).
        self.failed_total = 0

    # -- spawn ---------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None, site: Site) -> asyncio.Task[T]:
        """Start ``coro`` as a task that the stop waits for; see :meth:`quiesce.App.spawn`.

        ``site`` is the spawn site the report names. From a thread other than
        the loop's (a sync hook, another event loop), the task is created in
        the app's loop and this call waits for it, at most ``HANDOFF_TIMEOUT``.

        Raises:
            TypeError: ``coro`` is not a coroutine.
            StoppedError: the task phase of the stop has ended (decided on the loop).
            RuntimeError: called outside any running loop before the app runs (there
                is no loop to give the task to).
            TimeoutError: from another thread, the loop did not take the task in time
                (it was not started and never will be).

        """
        # The exact type first: asyncio.iscoroutine() is a call more on the hot path.
        if type(coro) is not CoroutineType and not asyncio.iscoroutine(coro):
            raise TypeError(f"spawn() needs a coroutine, like spawn(work()), not {coro!r}")
        entry = (site, coro)
        owner = self._loop
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and (owner is None or loop is owner):
            return self._create(loop, entry, name)
        if self._closed or owner is None:  # a shortcut only: on the loop, _create() decides
            coro.close()
            if owner is None:
                raise RuntimeError("spawn() before the app runs: there is no loop yet")
            raise StoppedError("spawn() after the task phase of the stop has ended")
        return self._handoff(owner, entry, name)

    def _handoff(
        self, owner: asyncio.AbstractEventLoop, entry: Entry, name: str | None
    ) -> asyncio.Task[Any]:
        """Have the app's loop create the task; wait for its answer, bounded."""
        handoff: concurrent.futures.Future[asyncio.Task[Any]] = concurrent.futures.Future()
        coro = entry[1]

        def create() -> None:
            # False when the caller gave up waiting: it was told the task did not start.
            if not handoff.set_running_or_notify_cancel():
                coro.close()
                return
            try:
                handoff.set_result(self._create(owner, entry, name))
            except BaseException as exc:  # the caller's thread raises it, not the loop
                handoff.set_exception(exc)

        try:
            owner.call_soon_threadsafe(create)
        except RuntimeError:  # the loop has closed: the app is over
            coro.close()
            raise StoppedError("spawn() after the app's loop has closed") from None
        try:
            return handoff.result(timeout=HANDOFF_TIMEOUT)
        except TimeoutError:
            if not handoff.cancel():  # create() is running: its answer is a moment away
                return handoff.result(timeout=HANDOFF_TIMEOUT)
            raise TimeoutError(
                f"spawn(): the loop did not take the task within {HANDOFF_TIMEOUT:g}s;"
                " it was not started"
            ) from None

    def _create(
        self, loop: asyncio.AbstractEventLoop, entry: Entry, name: str | None
    ) -> asyncio.Task[Any]:
        # On the loop, as is every close of the phase: the decision cannot go stale.
        if self._closed:
            entry[1].close()
            raise StoppedError("spawn() after the task phase of the stop has ended")
        task = loop.create_task(self._run(entry), name=name)
        tasks = self._tasks
        tasks[task] = entry
        if len(tasks) >= self._sweep_at:
            self._sweep()
        return task

    @tracked_wrapper
    async def _run(self, entry: Entry) -> Any:
        # A wrapper, not a done-callback: no loop handle per task, and the failure is
        # logged from inside the task, when it happens, not at the next sweep.
        try:
            return await entry[1]
        except Exception as exc:
            task = asyncio.current_task()
            what = f"task {task.get_name() if task else '?'!r} spawned at {where(*entry[0])}"
            logger.error("tracked %s failed: %s", what, describe(exc), exc_info=exc)
            self._failed += 1
            self.failed_total += 1
            if len(self._failures) < FAILURES_KEPT:
                self._failures.append((what, exc))
            raise

    def _sweep(self) -> None:
        """Forget finished tasks; O(1) amortised per spawn."""
        done = [task for task in self._tasks if task.done()]
        for task in done:
            coro = self._tasks.pop(task)[1]
            if task.cancelled():
                # Cancelled before its first step, _run() never awaited it; closing it
                # spares the user a "never awaited" warning (a no-op once it ran).
                coro.close()
            else:
                # _run() logged a failure already; retrieving it keeps asyncio from
                # logging it again ("exception was never retrieved").
                task.exception()
        self._sweep_at = max(SWEEP_MIN, 2 * len(self._tasks))

    # -- guard ---------------------------------------------------------------

    def guard(self, name: str) -> Guard:
        """A critical section the stop waits for; see :meth:`quiesce.App.guard`."""
        return Guard(self, name)

    def _enter_guard(self, name: str) -> int:
        with self._lock:
            if self._closed:
                raise StoppedError("guard() after the task phase of the stop has ended")
            self._guard_seq += 1
            self._guards[self._guard_seq] = name
            return self._guard_seq

    def _exit_guard(self, token: int) -> None:
        with self._lock:
            self._guards.pop(token, None)
            idle = not self._guards
        if idle and self._loop is not None and self._changed is not None:
            # Guards may be released from any thread; the event belongs to the loop.
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._changed.set)

    # -- periodic jobs -------------------------------------------------------

    def every(
        self, seconds: float, fn: Callable[[], Any], name: str | None, site: Site
    ) -> PeriodicJob:
        """Register a periodic job declared at ``site``; see :meth:`quiesce.App.every`.

        Registered before :meth:`start_jobs` (the app is ready), it starts then;
        after, at once (unless the stop has closed the task phase).
        """
        job = PeriodicJob(seconds, fn, name or callable_name(fn), site)
        self._jobs.append(job)
        if self._jobs_started and self._jobs_stop is not None and not self._closed:
            job.start(self, self._jobs_stop)
        return job

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop that runs the app (guards wake it from other threads)."""
        self._loop = loop
        self._changed = asyncio.Event()
        self._jobs_stop = asyncio.Event()

    def start_jobs(self) -> None:
        """Start every registered periodic job (once the app is ready)."""
        assert self._jobs_stop is not None, "bind() first"
        self._jobs_started = True
        for job in self._jobs:
            job.start(self, self._jobs_stop)

    # -- the stop ------------------------------------------------------------

    def running(self) -> int:
        """How many tracked tasks and guards are running (cheap: no stacks are formatted)."""
        self._sweep()
        with self._lock:
            return len(self._tasks) + len(self._guards)

    def pending(self) -> list[str]:
        """Names of the tracked work that is still running."""
        self._sweep()
        with self._lock:
            guards = [f"guard {name}" for name in self._guards.values()]
        return [describe_task(t, entry[0]) for t, entry in self._tasks.items()] + guards

    async def stop(self, record: PhaseRecord, *, budget: float, cancel_grace: float) -> None:
        """Stop periodic jobs between runs, wait for tracked work, cancel what is left.

        Waits at most ``budget`` seconds, then cancels the remaining tasks and
        gives them ``cancel_grace`` seconds to unwind. Everything that had to
        be cancelled is recorded as cut, with its stack; every task or periodic
        job that failed is recorded as an error. Afterwards :meth:`spawn` and
        :meth:`guard` raise :class:`StoppedError`.

        Raises:
            asyncio.CancelledError: the stop itself was cancelled (a forced end);
                what was left is cancelled and recorded as cut first.

        """
        assert self._jobs_stop is not None, "bind() first"
        self._jobs_stop.set()
        record.waited_for.extend(self.pending())
        try:
            async with asyncio.timeout(budget):
                await self._wait_idle()
        except TimeoutError:
            await self._cut(record, cancel_grace)
        except asyncio.CancelledError:
            # Cut from outside (a force, or the step's backstop fired first): there is
            # no time to wait, but what is left is still named, and not named again later.
            self._close()
            self._sweep()
            for task, entry in self._tasks.items():
                record.timed_out(f"{describe_task(task, entry[0])} [cancelled, not awaited]")
                _cancel(task, entry)
            self._tasks.clear()
            raise
        finally:
            self._close()
            self.record_failures(record)

    def record_failures(self, record: PhaseRecord) -> None:
        """Keep every failure so far (tasks, periodic jobs) as an error of ``record``, once.

        They were logged with their tracebacks when they happened; the record
        gets one line each.
        """
        for what, exc in self._failures:
            record.error(what, exc, log=False)
        if (more := self._failed - len(self._failures)) > 0:
            record.errors.append(f"{more} more tracked tasks failed (see the log)")
            record.mark(Outcome.ERROR)
        self._failures.clear()
        self._failed = 0
        for job in self._jobs:
            if job.failures and job.last_error is not None:
                what = f"periodic job {job.name!r} failed {job.failures} of {job.runs} runs"
                record.error(what, job.last_error, log=False)
                job.failures = 0

    def _close(self) -> None:
        with self._lock:
            self._closed = True

    async def _wait_idle(self) -> None:
        assert self._changed is not None
        # Tracked work may spawn more tracked work while we wait: loop until none is left.
        while True:
            self._sweep()
            if self._tasks:
                await asyncio.wait(list(self._tasks))
                continue
            self._changed.clear()
            with self._lock:
                # Idle and closed in one step: a guard entered in between would go unseen.
                if not self._guards:
                    self._closed = True
                    return
            await self._changed.wait()

    async def _cut(self, record: PhaseRecord, grace: float) -> None:
        # Closed before the cancel: a task spawned from a cancelled task's cleanup would
        # be neither cancelled nor waited for. The spawn raises StoppedError in it instead.
        self._close()
        self._sweep()
        # Where each task was at the deadline: once cancelled and unwound it has no stack.
        described = {task: describe_task(task, entry[0]) for task, entry in self._tasks.items()}
        for task, entry in self._tasks.items():
            _cancel(task, entry)
        try:
            if described and grace > 0:
                await asyncio.wait(described, timeout=grace)
        finally:  # named even when a force cuts the grace short
            for task, where in described.items():
                if task.done():
                    state = "cancelled"
                else:  # with no grace it had no chance to unwind: it did not ignore anything
                    state = "ignored cancellation" if grace > 0 else "cancelled, not awaited"
                record.timed_out(f"{where} [{state}]")
        self._sweep()
        with self._lock:
            guards = list(self._guards.values())
        for name in guards:
            record.timed_out(f"guard {name} [still held]")

    def abandon(self) -> list[str]:
        """Cancel every tracked task at once (the forced end); return what was cut."""
        with self._lock:
            self._closed = True
        cut = self.pending()
        if self._jobs_stop is not None:
            self._jobs_stop.set()
        for task, entry in self._tasks.items():
            _cancel(task, entry)
        return cut


class Guard:
    """A critical section the stop waits for: ``async with`` or ``with`` (thread-safe).

    Raises :class:`StoppedError` on entry once the task phase of the stop has ended.
    """

    def __init__(self, tracker: TaskTracker, name: str) -> None:
        self._tracker = tracker
        self._name = name
        self._tokens: list[int] = []

    def __enter__(self) -> Guard:
        self._tokens.append(self._tracker._enter_guard(self._name))
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tracker._exit_guard(self._tokens.pop())

    async def __aenter__(self) -> Guard:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)


def _cancel(task: asyncio.Task[Any], entry: Entry) -> None:
    """Cancel a tracked task that may not be swept again (the stop is ending)."""
    task.cancel()
    wrapper: Any = task.get_coro()
    if inspect.getcoroutinestate(wrapper) == inspect.CORO_CREATED:
        entry[1].close()  # its wrapper never ran: nothing else will close it
