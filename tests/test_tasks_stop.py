"""The close of the task phase: every spawn is refused (StoppedError) or awaited and reported.

In-process against TaskTracker and a PhaseRecord: the decision is our own logic.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

import quiesce.tasks as tasks_module
from conftest import the_cut
from quiesce import App, ExitCode
from quiesce.errors import StoppedError
from quiesce.phases import Outcome, PhaseRecord
from quiesce.stacks import Site
from quiesce.tasks import TaskTracker

THREADS = 4
#: Only a bound: each thread meets StoppedError long before it.
SPAWNS_PER_THREAD = 200_000


def here() -> Site:
    """The caller's line, the spawn site ``App.spawn`` gives the tracker."""
    caller = sys._getframe(1)
    return (caller.f_code, caller.f_lineno)


def bound_tracker() -> TaskTracker:
    tracker = TaskTracker()
    tracker.bind(asyncio.get_running_loop())
    return tracker


def named_in(record: PhaseRecord, name: str) -> bool:
    return any(f"task {name!r} " in line for line in record.cut)


async def test_tracker_spawn_in_a_cancelled_tasks_cleanup_is_refused() -> None:
    tracker = bound_tracker()
    refused: list[StoppedError] = []
    accepted: list[asyncio.Task[None]] = []

    async def save_for_later() -> None:
        await asyncio.sleep(30)

    async def export() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            try:
                accepted.append(tracker.spawn(save_for_later(), "save_for_later", here()))
            except StoppedError as exc:
                refused.append(exc)
            raise

    _ = tracker.spawn(export(), "export", here())
    record = PhaseRecord("tasks", 0.0)
    try:
        async with asyncio.timeout(5):
            await tracker.stop(record, budget=0.05, cancel_grace=0.5)
        # Never accepted and then left running unnamed past the stop.
        for task in accepted:
            assert task.done() or named_in(record, task.get_name()), record.cut
        assert not accepted, "the cut has begun: the spawn is refused in the caller"
        assert len(refused) == 1
        assert record.outcome is Outcome.TIMEOUT
        (cut,) = record.cut
        assert cut.startswith("task 'export' spawned at tests/test_tasks_stop.py:")
        assert cut.endswith("[cancelled]")
        assert record.errors == []  # a cancelled task is not a failed one
    finally:
        for task in accepted:
            task.cancel()


async def race_the_close(*, hold: bool) -> None:
    """THREADS threads spawn flat out from before the stop until spawn() refuses.

    ``hold``: the tasks wait until cancelled, so the phase ends by its cut (and
    spawns arrive during its grace); otherwise they end at once and the phase
    closes idle between two spawns.
    """
    tracker = bound_tracker()
    loop = asyncio.get_running_loop()
    finished: set[str] = set()
    accepted: list[tuple[str, asyncio.Task[None]]] = []
    refused = [0] * THREADS
    under_way = asyncio.Event()

    async def work(name: str) -> None:
        if hold:
            await asyncio.Event().wait()
        finished.add(name)

    def spawner(i: int) -> None:
        for n in range(SPAWNS_PER_THREAD):
            name = f"w{i}-{n}"
            try:
                accepted.append((name, tracker.spawn(work(name), name, here())))
            except StoppedError:
                refused[i] += 1
                return
            if n == 10:
                loop.call_soon_threadsafe(under_way.set)

    threads = [threading.Thread(target=spawner, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    record = PhaseRecord("tasks", 0.0)
    async with asyncio.timeout(5):
        await under_way.wait()
        await tracker.stop(record, budget=0.05, cancel_grace=0.05)
    # What had finished when stop() returned: nothing may finish unnamed after it.
    done_at_stop = set(finished)

    def join() -> None:
        for thread in threads:
            thread.join(timeout=5)

    await loop.run_in_executor(None, join)
    assert not any(thread.is_alive() for thread in threads)
    assert refused == [1] * THREADS, "every thread ends on a StoppedError"
    late = [name for name, _ in accepted if name not in done_at_stop and not named_in(record, name)]
    assert late == [], f"{len(late)} of {len(accepted)} accepted spawns ran past the stop unnamed"
    assert all(task.done() for _, task in accepted)
    if hold:
        assert len(record.cut) == len(accepted), "each accepted task is cut, and named once"
    else:
        assert record.cut == []


async def test_tracker_spawns_from_threads_during_the_cut_are_refused_or_reported() -> None:
    await race_the_close(hold=True)


async def test_tracker_spawns_from_threads_racing_the_idle_close_are_refused_or_awaited() -> None:
    # The close lands between two spawns of a thread in about one round of eight
    # (measured on the code before the fix): 100 rounds miss it with odds of ~1e-6.
    for _ in range(100):
        await race_the_close(hold=False)


async def test_tracker_spawn_from_another_event_loop_runs_on_the_apps_loop() -> None:
    tracker = bound_tracker()
    loop = asyncio.get_running_loop()
    finished: list[str] = []
    spawned: list[asyncio.Task[None]] = []

    async def work() -> None:
        await asyncio.sleep(0.05)
        finished.append("work")

    async def other_loop() -> None:
        spawned.append(tracker.spawn(work(), "from-other-loop", here()))

    await loop.run_in_executor(None, asyncio.run, other_loop())
    (task,) = spawned
    assert task.get_loop() is loop, "tracked (and waited for) on the app's loop"
    record = PhaseRecord("tasks", 0.0)
    async with asyncio.timeout(5):
        await tracker.stop(record, budget=2.0, cancel_grace=0.1)
    assert finished == ["work"]
    assert record.outcome is Outcome.OK


async def test_tracker_spawn_that_timed_out_in_the_caller_never_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks_module, "HANDOFF_TIMEOUT", 0.05)
    tracker = bound_tracker()
    loop = asyncio.get_running_loop()
    ran: list[str] = []
    raised: list[BaseException] = []
    gave_up = threading.Event()

    async def work() -> None:
        ran.append("work")

    def from_thread() -> None:
        try:
            _ = tracker.spawn(work(), "late", here())
        except TimeoutError as exc:
            raised.append(exc)
        finally:
            gave_up.set()

    thread = threading.Thread(target=from_thread, daemon=True)
    thread.start()
    # The loop is busy (blocked on purpose) until the caller has given up waiting.
    assert gave_up.wait(timeout=5)
    await loop.run_in_executor(None, thread.join, 5)
    record = PhaseRecord("tasks", 0.0)
    async with asyncio.timeout(5):
        await tracker.stop(record, budget=1.0, cancel_grace=0.1)
    assert ran == [], "the caller was told it did not start: it must not run later"
    assert record.waited_for == []
    (exc,) = raised
    assert str(exc).endswith("it was not started")


async def test_app_tasks_cut_with_no_cancel_grace_names_and_cancels_the_task() -> None:
    # cancel_grace=0: the tasks step's backstop and the tracker's budget end together.
    app = App(name="svc", stop_timeout=1.0, cleanup_reserve=0.2, cancel_grace=0)
    stuck: list[asyncio.Task[None]] = []

    async def export() -> None:
        await asyncio.sleep(30)

    @app.after_start
    async def begin() -> None:
        stuck.append(app.spawn(export(), name="export"))
        app.stop()

    async with asyncio.timeout(5):
        report = await app.serve()
    cut = the_cut(report.step("tasks"))
    assert cut.startswith("task 'export' spawned at tests/test_tasks_stop.py:")
    assert cut.endswith("[cancelled, not awaited]")
    _ = await asyncio.wait(stuck, timeout=1)  # cancelled, not waited for: let it land
    assert stuck[0].cancelled()
    assert report.exit_code == ExitCode.INCOMPLETE
