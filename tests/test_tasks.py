from __future__ import annotations

import asyncio
import gc
import logging
import sys

import pytest

from conftest import the_cut
from quiesce import App, ExitCode, Outcome
from quiesce.phases import PhaseRecord
from quiesce.stacks import Site
from quiesce.tasks import FAILURES_KEPT, HANDOFF_TIMEOUT, TaskTracker, describe_task, task_stack


def here() -> Site:
    """The caller's line, the spawn site ``App.spawn`` gives the tracker."""
    caller = sys._getframe(1)
    return (caller.f_code, caller.f_lineno)


async def test_failed_tracked_task_is_logged_when_it_fails_and_makes_the_stop_incomplete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App(name="svc")
    logged_before_stop: list[logging.LogRecord] = []
    spawned_at: list[int] = []

    async def breaks() -> None:
        raise ValueError("lost the receipt")

    async def run() -> None:
        await app.ready
        spawned_at.append(sys._getframe().f_lineno + 1)
        task = app.spawn(breaks(), name="receipt-7")
        await asyncio.wait({task})
        logged_before_stop.extend(r for r in caplog.records if "receipt-7" in r.getMessage())
        app.stop()

    runner = asyncio.create_task(run())
    with caplog.at_level(logging.ERROR, logger="quiesce.lifecycle"):
        report = await app.serve()
    await runner
    site = f"tests/test_tasks.py:{spawned_at[0]}"
    (logged,) = logged_before_stop
    assert logged.getMessage() == (
        f"tracked task 'receipt-7' spawned at {site} failed: ValueError: lost the receipt"
    )
    assert logged.exc_info is not None
    assert str(logged.exc_info[1]) == "lost the receipt"
    failures = [r for r in caplog.records if r.exc_info and "lost the receipt" in r.getMessage()]
    assert failures == [logged], "logged once, when it failed; not again at the stop"
    tasks = report.step("tasks")
    assert tasks.outcome is Outcome.ERROR
    assert tasks.errors == [f"task 'receipt-7' spawned at {site}: ValueError: lost the receipt"]
    assert report.exit_code == ExitCode.INCOMPLETE
    assert report.tasks_failed == 1
    assert "  tasks: 1 tracked tasks failed" in report.to_text().splitlines()


async def test_failing_periodic_job_makes_the_tasks_phase_an_error() -> None:
    app = App(name="svc")
    calls: list[int] = []
    twice = asyncio.Event()

    def refresh_prices() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            twice.set()
        if len(calls) == 1:
            raise RuntimeError("price feed down")

    _ = app.every(0.01, refresh_prices, name="refresh_prices")

    async def run() -> None:
        await app.ready
        async with asyncio.timeout(5):
            await twice.wait()
        app.stop()

    runner = asyncio.create_task(run())
    report = await app.serve()
    await runner
    tasks = report.step("tasks")
    assert tasks.outcome is Outcome.ERROR
    (line,) = tasks.errors
    assert line.startswith("periodic job 'refresh_prices' failed 1 of ")
    assert line.endswith(" runs: RuntimeError: price feed down")
    assert report.exit_code == ExitCode.INCOMPLETE


async def test_tasks_cancelled_by_the_user_are_not_errors_nor_warnings() -> None:
    # Regression guard for the failure wrapper: a task cancelled before its first step
    # never runs the wrapper, whose user coroutine must still be closed (no
    # "never awaited" RuntimeWarning, an error under filterwarnings=error).
    app = App(name="svc")

    async def work() -> None:
        await asyncio.sleep(30)

    async def run() -> None:
        await app.ready
        early = app.spawn(work(), name="early")
        early.cancel()
        started = app.spawn(work(), name="started")
        await asyncio.sleep(0)
        started.cancel()
        await asyncio.wait({early, started})
        app.stop()

    runner = asyncio.create_task(run())
    report = await app.serve()
    await runner
    gc.collect()
    tasks = report.step("tasks")
    assert tasks.outcome is Outcome.OK, tasks
    assert report.exit_code == ExitCode.OK


async def test_tracker_many_failures_keep_the_first_in_full_and_count_the_rest() -> None:
    tracker = TaskTracker()
    tracker.bind(asyncio.get_running_loop())

    async def breaks(n: int) -> None:
        raise KeyError(n)

    tasks = [tracker.spawn(breaks(n), f"t{n}", here()) for n in range(FAILURES_KEPT + 5)]
    await asyncio.wait(tasks)
    record = PhaseRecord("tasks", 0.0)
    await tracker.stop(record, budget=1.0, cancel_grace=0.1)
    assert record.outcome is Outcome.ERROR
    assert len(record.errors) == FAILURES_KEPT + 1
    assert record.errors[0].startswith("task 't0' spawned at tests/test_tasks.py:")
    assert record.errors[-1] == "5 more tracked tasks failed (see the log)"


async def test_spawn_from_a_sync_hook_thread_is_tracked() -> None:
    app = App(name="svc")
    finished: list[str] = []

    async def later() -> None:
        await asyncio.sleep(0.1)
        finished.append("later")

    @app.after_start
    def from_thread() -> None:  # sync hooks run in a worker thread
        _ = app.spawn(later(), name="later")
        app.stop()

    report = await app.serve()
    assert finished == ["later"]
    tasks = report.step("tasks")
    assert any("'later'" in w for w in tasks.waited_for)


async def test_spawn_of_something_not_a_coroutine_raises_in_the_caller_thread_at_once() -> None:
    app = App(name="svc")
    raised: list[BaseException] = []

    @app.after_start
    def from_thread() -> None:
        try:
            _ = app.spawn(asyncio.sleep)  # type: ignore[arg-type]  # forgot the call
        except TypeError as exc:
            raised.append(exc)
        app.stop()

    report = await asyncio.wait_for(app.serve(), HANDOFF_TIMEOUT / 2)
    assert report.exit_code == ExitCode.OK, report.to_text()
    (exc,) = raised
    assert str(exc).startswith("spawn() needs a coroutine, like spawn(work()), not <function sleep")
    with pytest.raises(TypeError, match="needs a coroutine"):
        _ = app.spawn(None)  # type: ignore[arg-type]


async def test_tasks_spawned_by_tracked_tasks_are_waited_for_too() -> None:
    app = App(name="svc")
    finished: list[str] = []

    async def child() -> None:
        await asyncio.sleep(0.05)
        finished.append("child")

    async def parent() -> None:
        await app.stopping
        await asyncio.sleep(0.05)
        _ = app.spawn(child(), name="child")
        finished.append("parent")

    @app.after_start
    async def begin() -> None:
        _ = app.spawn(parent(), name="parent")
        app.stop()

    await app.serve()
    assert finished == ["parent", "child"]


async def test_many_spawns_keep_only_live_tasks() -> None:
    app = App(name="svc")
    live: list[int] = []

    async def noop() -> None:
        return None

    async def run() -> None:
        await app.ready
        for _ in range(20):
            tasks = [app.spawn(noop()) for _ in range(100)]
            await asyncio.gather(*tasks)
        live.append(len(app._tracker.pending()))
        app.stop()

    runner = asyncio.create_task(run())
    await app.serve()
    await runner
    assert live == [0]


async def test_deadline_cuts_and_names_the_task_with_its_await_chain() -> None:
    app = App(name="svc", stop_timeout=1.0, cleanup_reserve=0.2, cancel_grace=0.1)

    async def inner() -> None:
        await asyncio.sleep(30)

    async def outer() -> None:
        await inner()

    @app.after_start
    async def begin() -> None:
        _ = app.spawn(outer(), name="slow-export")
        app.stop()

    async with asyncio.timeout(5):
        report = await app.serve()
    cut = the_cut(report.step("tasks"))
    assert "task 'slow-export' spawned at tests/test_tasks.py:" in cut
    assert "in inner <- " in cut
    assert "in outer" in cut
    assert "_run" not in cut, "the tracker's wrapper is not part of the user's stack"
    assert cut.endswith("[cancelled]")
    assert report.exit_code == ExitCode.INCOMPLETE
    assert report.stop_duration < 1.0 + 0.3


async def test_task_stack_follows_nested_awaits() -> None:
    gate = asyncio.Event()

    async def leaf() -> None:
        await gate.wait()

    async def root() -> None:
        await leaf()

    task = asyncio.create_task(root())
    await asyncio.sleep(0)
    stack = task_stack(task)
    gate.set()
    await task
    assert [frame.rsplit(" in ", 1)[1] for frame in stack][:3] == ["root", "leaf", "wait"]


async def test_describe_task_of_a_tracked_task_finds_its_spawn_site_alone() -> None:
    # signals.py dumps every task of the loop with describe_task(task), no site given.
    tracker = TaskTracker()
    tracker.bind(asyncio.get_running_loop())
    gate = asyncio.Event()

    async def export() -> None:
        await gate.wait()

    line = sys._getframe().f_lineno + 1
    task = tracker.spawn(export(), "export", here())
    await asyncio.sleep(0)
    text = describe_task(task)
    gate.set()
    await task
    assert text.startswith(f"task 'export' spawned at tests/test_tasks.py:{line} at ")
    assert text.endswith("in export")


async def test_periodic_job_declared_during_the_start_first_runs_once_the_app_is_ready() -> None:
    app = App(name="svc")
    runs_before_ready: list[bool] = []

    def tick() -> None:
        runs_before_ready.append(not app.ready.is_set())
        app.stop()

    @app.before_start
    def declare() -> None:
        app.every(0.01, tick)

    @app.before_start
    async def give_it_time() -> None:
        await asyncio.sleep(0.05)  # a job started now would run here, before ready

    await app.serve()
    assert runs_before_ready
    assert not any(runs_before_ready)
