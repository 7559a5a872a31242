from __future__ import annotations

import asyncio
import logging

import pytest

from quiesce import App, ExitCode, Outcome
from quiesce.tasks import HANDOFF_TIMEOUT, task_stack


async def test_failed_tracked_task_is_logged_with_its_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App(name="svc")

    async def breaks() -> None:
        raise ValueError("lost the receipt")

    async def run() -> None:
        await app.ready
        task = app.spawn(breaks(), name="receipt-7")
        await asyncio.wait({task})
        app.stop()

    runner = asyncio.create_task(run())
    with caplog.at_level(logging.ERROR, logger="quiesce.lifecycle"):
        report = await app.serve()
    await runner
    assert report.exit_code == ExitCode.OK
    assert any(
        "tracked task receipt-7 failed" in r.getMessage() and "lost the receipt" in r.getMessage()
        for r in caplog.records
    )


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
    (tasks,) = [r for r in report.stop if r.name == "tasks"]
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
    (tasks,) = [r for r in report.stop if r.name == "tasks"]
    assert tasks.outcome is Outcome.TIMEOUT
    (cut,) = tasks.cut
    assert "task 'slow-export' spawned at tests/test_tasks.py:" in cut
    assert "in inner <- " in cut
    assert "in outer" in cut
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
