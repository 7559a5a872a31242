"""Tracked work: ``spawn`` and ``guard`` (Kitex's GoroutineLock, with a deadline) and ``every``.

Only tracked work is waited for at stop; other tasks of the loop are not
(aiohttp tried waiting for every task and reverted it). Each task remembers
where it was spawned, so the report can name what the deadline cut.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from types import CodeType, FrameType, TracebackType
from typing import Any, TypeVar

from quiesce.errors import StoppedError
from quiesce.hooks import call, callable_name
from quiesce.phases import PhaseRecord

__all__ = ["Guard", "PeriodicJob", "TaskTracker", "describe_task", "task_stack"]

logger = logging.getLogger("quiesce.lifecycle")
T = TypeVar("T")

#: How long spawn() from another thread waits for the loop to create the task.
HANDOFF_TIMEOUT = 5.0
#: Fewest tracked tasks before finished ones are swept away.
SWEEP_MIN = 64


class TaskTracker:
    """The tracked tasks, guards and periodic jobs of one app."""

    def __init__(self) -> None:
        # task -> (code, line) of the spawn call: cheap to take, formatted only when reported.
        self._tasks: dict[asyncio.Task[Any], tuple[CodeType, int]] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._guards: dict[int, str] = {}
        self._guard_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._jobs: list[PeriodicJob] = []
        self._jobs_stop: asyncio.Event | None = None
        # Finished tasks are dropped in amortised sweeps instead of a done-callback per
        # task: a callback costs a loop handle per task, half again a bare create_task.
        self._sweep_at = SWEEP_MIN

    # -- spawn ---------------------------------------------------------------

    def spawn(
        self, coro: Coroutine[Any, Any, T], name: str | None = None, depth: int = 1
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a task that the stop waits for; see :meth:`quiesce.App.spawn`.

        ``depth`` says which caller's frame is the spawn site the report names.
        From a thread other than the loop's (a sync hook), the task is created
        in the loop and this call waits for it, at most ``HANDOFF_TIMEOUT``.
        """
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"spawn() needs a coroutine, like spawn(work()), not {coro!r}")
        if self._closed:
            coro.close()
            raise StoppedError("spawn() after the task phase of the stop has ended")
        caller = sys._getframe(depth)
        site = (caller.f_code, caller.f_lineno)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            owner = self._loop
            if owner is None:
                coro.close()
                raise RuntimeError("spawn() before the app runs: there is no loop yet") from None
            handoff: concurrent.futures.Future[asyncio.Task[T]] = concurrent.futures.Future()

            def create() -> None:
                try:
                    handoff.set_result(self._create(owner, coro, name, site))
                except BaseException as exc:  # the caller's thread raises it, not the loop
                    handoff.set_exception(exc)

            owner.call_soon_threadsafe(create)
            return handoff.result(timeout=HANDOFF_TIMEOUT)
        return self._create(loop, coro, name, site)

    def _create(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, T],
        name: str | None,
        site: tuple[CodeType, int],
    ) -> asyncio.Task[T]:
        task = loop.create_task(coro, name=name)
        tasks = self._tasks
        tasks[task] = site
        if len(tasks) >= self._sweep_at:
            self._sweep()
        return task

    def _sweep(self) -> None:
        """Forget finished tasks, logging those that failed; O(1) amortised per spawn."""
        done = [task for task in self._tasks if task.done()]
        for task in done:
            del self._tasks[task]
            if not task.cancelled() and (exc := task.exception()) is not None:
                logger.error("tracked task %s failed: %r", task.get_name(), exc, exc_info=exc)
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
        self, seconds: float, fn: Callable[[], Any], name: str | None, depth: int = 1
    ) -> PeriodicJob:
        """Register a periodic job; it starts with :meth:`start_jobs`.

        ``depth`` says which caller's frame the report names as the job's origin.
        """
        caller = sys._getframe(depth)
        job = PeriodicJob(seconds, fn, name or callable_name(fn), (caller.f_code, caller.f_lineno))
        self._jobs.append(job)
        if self._jobs_stop is not None and not self._closed:
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
        for job in self._jobs:
            job.start(self, self._jobs_stop)

    # -- the stop ------------------------------------------------------------

    def pending(self) -> list[str]:
        """Names of the tracked work that is still running."""
        self._sweep()
        with self._lock:
            guards = [f"guard {name}" for name in self._guards.values()]
        return [describe_task(t, self._tasks.get(t)) for t in self._tasks] + guards

    async def stop(self, record: PhaseRecord, *, budget: float, cancel_grace: float) -> None:
        """Stop periodic jobs between runs, wait for tracked work, cancel what is left.

        Waits at most ``budget`` seconds, then cancels the remaining tasks and
        gives them ``cancel_grace`` seconds to unwind. Everything that had to
        be cancelled is recorded as cut, with its stack. Afterwards
        :meth:`spawn` and :meth:`guard` raise :class:`StoppedError`.
        """
        assert self._jobs_stop is not None, "bind() first"
        self._jobs_stop.set()
        record.waited_for.extend(self.pending())
        try:
            async with asyncio.timeout(budget):
                await self._wait_idle()
        except TimeoutError:
            await self._cut(record, cancel_grace)
        finally:
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
            if not self._guards:
                return
            await self._changed.wait()

    async def _cut(self, record: PhaseRecord, grace: float) -> None:
        self._sweep()
        # Where each task was at the deadline: once cancelled and unwound it has no stack.
        described = {task: describe_task(task, site) for task, site in self._tasks.items()}
        for task in described:
            task.cancel()
        if described and grace > 0:
            await asyncio.wait(described, timeout=grace)
        for task, where in described.items():
            state = "ignored cancellation" if not task.done() else "cancelled"
            record.timed_out(f"{where} [{state}]")
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
        for task in list(self._tasks):
            task.cancel()
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


class PeriodicJob:
    """``fn`` run every ``seconds`` (fixed rate, missed ticks skipped) until the stop.

    At the stop a running iteration finishes; no new one starts. An iteration
    that raises is logged and the job goes on.
    """

    def __init__(
        self, seconds: float, fn: Callable[[], Any], name: str, site: tuple[CodeType, int]
    ) -> None:
        self.seconds = seconds
        self.site = site
        self.fn = fn
        self.name = name
        self.runs = 0
        self.task: asyncio.Task[None] | None = None

    def start(self, tracker: TaskTracker, stop: asyncio.Event) -> None:
        """Start the job's loop as a tracked task."""
        if self.task is None:
            loop = asyncio.get_running_loop()
            self.task = tracker._create(loop, self._loop(stop), f"every {self.name}", self.site)

    async def _loop(self, stop: asyncio.Event) -> None:
        next_run = time.monotonic()
        while not stop.is_set():
            try:
                await call(self.fn)
            except Exception:
                logger.exception("periodic job %s failed", self.name)
            self.runs += 1
            now = time.monotonic()
            next_run += self.seconds
            if next_run < now:  # overran: skip the missed ticks instead of bursting
                next_run = now + self.seconds - (now - next_run) % self.seconds
            try:
                async with asyncio.timeout(next_run - now):
                    await stop.wait()
            except TimeoutError:
                pass


def task_stack(task: asyncio.Task[Any]) -> list[str]:
    """The task's await chain, outermost first, as ``file:line in func`` strings.

    Follows ``cr_await`` through nested coroutines, which ``Task.get_stack()``
    does not do.
    """
    frames: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame: FrameType | None = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(f"{_where(frame.f_code, frame.f_lineno)} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def describe_task(task: asyncio.Task[Any], site: tuple[CodeType, int] | None = None) -> str:
    """One line: the task's name, where it was spawned and where it is now."""
    text = f"task {task.get_name()!r}"
    if site is not None:
        text += f" spawned at {_where(*site)}"
    stack = task_stack(task)
    if stack:
        text += " at " + " <- ".join(reversed(stack))
    return text


def _where(code: CodeType, line: int) -> str:
    # Paths under the working directory are shown relative: shorter report lines.
    path = code.co_filename
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(path)
        if not relative.startswith(".."):
            path = relative
    return f"{path}:{line}"
