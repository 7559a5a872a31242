"""Resources and hooks, each bounded on its own: close_timeout, a hook's timeout, leaks, budgets."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from conftest import the_cut
from quiesce import App, ConfigError, ExitCode, Outcome, PhaseRecord, Report
from quiesce.resources import CLOSE_TIMEOUT, NamesLeaks

BAD_SECONDS = [
    (-1, "a positive number of seconds"),
    (0, "a positive number of seconds"),
    (math.inf, "a positive number of seconds"),
    ("5", "a positive number of seconds"),
    (True, "a positive number of seconds"),
    (1e6, "at most 86400 seconds"),
]


def stop_when_ready(app: App) -> None:
    @app.after_start
    def ready() -> None:
        app.stop("test done")


@asynccontextmanager
async def hangs_on_close() -> AsyncIterator[str]:
    yield "stuck"
    await asyncio.Event().wait()


# -- close_timeout ----------------------------------------------------------------------


def test_close_timeout_default_is_seed_003s_resource_release_15s() -> None:
    app = App(name="svc")
    assert CLOSE_TIMEOUT == 15.0
    assert app.resource(hangs_on_close, name="db").close_timeout == 15.0
    assert app.resource(hangs_on_close, name="q", close_timeout=2).close_timeout == 2


async def test_close_without_its_own_timeout_is_cut_at_15s() -> None:
    app = App(name="svc", stop_timeout=18)
    app.resource(hangs_on_close, name="stuck")
    stop_when_ready(app)
    async with asyncio.timeout(25):
        report = await app.serve()
    assert the_cut(report.step("resources")) == "resource stuck (close cut at 15s)"
    assert 15.0 <= report.step("resources").duration < 15.5
    assert report.exit_code == ExitCode.INCOMPLETE


async def test_own_close_timeout_cuts_that_close_and_the_next_still_closes() -> None:
    app = App(name="svc", stop_timeout=10)
    closed: list[str] = []

    @asynccontextmanager
    async def pool() -> AsyncIterator[None]:
        yield
        closed.append("pool")

    app.resource(pool, name="pool")
    app.resource(hangs_on_close, name="stuck", close_timeout=0.3)
    stop_when_ready(app)
    async with asyncio.timeout(10):
        report = await app.serve()
    resources = report.step("resources")
    assert the_cut(resources) == "resource stuck (close cut at 0.3s)"
    assert closed == ["pool"]
    assert 0.3 <= resources.duration < 0.6
    assert report.exit_code == ExitCode.INCOMPLETE


async def test_close_timeout_longer_than_the_budget_left_ends_with_the_budget() -> None:
    app = App(name="svc", stop_timeout=1)
    app.resource(hangs_on_close, name="stuck", close_timeout=60)
    stop_when_ready(app)
    async with asyncio.timeout(10):
        report = await app.serve()
    cut = the_cut(report.step("resources"))
    assert cut.startswith("resource stuck (close cut at 0.")
    assert report.stop_duration < 1 + 0.2


@pytest.mark.parametrize(("value", "must"), BAD_SECONDS)
async def test_bad_close_timeout_is_a_config_error_before_anything_opens(
    value: Any, must: str
) -> None:
    app = App(name="svc")
    opened: list[str] = []

    @asynccontextmanager
    async def db() -> AsyncIterator[None]:
        opened.append("db")
        yield

    app.resource(db, close_timeout=value)
    report = await app.serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error == f"resource 'db': close_timeout={value!r}: must be {must}"
    assert opened == []


# -- leaks: a value that names what its close cut -------------------------------------------


class Leaky:
    """A value that says what its close had to cut (a pool's connections, a queue's messages)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def leaks(self) -> list[str]:
        return self.lines


def leaky(lines: list[str]) -> Any:
    @asynccontextmanager
    async def resource() -> AsyncIterator[Leaky]:
        yield Leaky(lines)

    return resource


async def test_leaks_a_value_names_are_cuts_of_the_resources_step_and_exit_3() -> None:
    assert isinstance(Leaky([]), NamesLeaks)
    app = App(name="svc")
    app.resource(leaky(["message 1700-0 unacked", "message 1700-1 unacked"]), name="queue")
    stop_when_ready(app)
    report = await app.serve()
    resources = report.step("resources")
    assert resources.outcome is Outcome.TIMEOUT
    assert resources.cut == [
        "resource queue: message 1700-0 unacked",
        "resource queue: message 1700-1 unacked",
    ]
    assert report.exit_code == ExitCode.INCOMPLETE


async def test_a_value_that_names_no_leaks_stops_clean() -> None:
    app = App(name="svc")
    app.resource(leaky([]), name="queue")
    stop_when_ready(app)
    report = await app.serve()
    assert report.step("resources").cut == []
    assert report.exit_code == ExitCode.OK


async def test_leaks_that_raises_is_an_error_of_the_step_and_the_next_resource_closes() -> None:
    class Broken:
        def leaks(self) -> list[str]:
            raise ValueError("bookkeeping lost")

    @asynccontextmanager
    async def broken() -> AsyncIterator[Broken]:
        yield Broken()

    app = App(name="svc")
    closed: list[str] = []

    @asynccontextmanager
    async def first() -> AsyncIterator[None]:
        yield
        closed.append("first")

    app.resource(first, name="first")
    app.resource(broken, name="broken")
    stop_when_ready(app)
    report = await app.serve()
    resources = report.step("resources")
    assert resources.errors == ["resource broken: leaks(): ValueError: bookkeeping lost"]
    assert closed == ["first"]
    assert report.exit_code == ExitCode.INCOMPLETE


# -- a hook's own timeout ------------------------------------------------------------------


async def test_hook_timeout_shorter_than_hook_timeout_cuts_that_hook() -> None:
    app = App(name="svc", hook_timeout=10)
    ran: list[str] = []

    @app.after_stop(timeout=0.2)
    async def flush() -> None:
        await asyncio.sleep(30)

    @app.after_stop
    def after() -> None:
        ran.append("after")

    stop_when_ready(app)
    async with asyncio.timeout(10):
        report = await app.serve()
    after_stop = report.step("after_stop")
    assert the_cut(after_stop).startswith("hook ")
    assert the_cut(after_stop).endswith("flush (timeout 0.2s)")
    assert ran == ["after"]
    assert after_stop.duration < 0.6


async def test_hook_timeout_longer_than_hook_timeout_lets_that_hook_finish() -> None:
    app = App(name="svc", hook_timeout=0.1)
    done: list[str] = []

    @app.before_stop(timeout=3)
    async def sync_to_disk() -> None:
        await asyncio.sleep(0.4)
        done.append("synced")

    stop_when_ready(app)
    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert done == ["synced"]


async def test_plain_decorator_still_gets_the_apps_hook_timeout() -> None:
    app = App(name="svc", hook_timeout=0.2)

    @app.before_stop
    async def slow() -> None:
        await asyncio.sleep(30)

    stop_when_ready(app)
    async with asyncio.timeout(10):
        report = await app.serve()
    assert the_cut(report.step("before_stop")).endswith("slow (timeout 0.2s)")


async def test_each_hook_decorator_takes_a_timeout_and_returns_the_function() -> None:
    app = App(name="svc", hook_timeout=5)
    order: list[str] = []

    def record(name: str) -> Any:
        def hook() -> None:
            order.append(name)

        return hook

    for decorator in (app.before_start, app.after_start, app.before_stop, app.after_stop):
        hook = record(decorator.__name__)
        assert decorator(timeout=1)(hook) is hook
        assert decorator(record(decorator.__name__ + " direct"), timeout=1) is not None
    stop_when_ready(app)
    report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert order == [
        "before_start",
        "before_start direct",
        "after_start",
        "after_start direct",
        "before_stop",
        "before_stop direct",
        "after_stop",
        "after_stop direct",
    ]


@pytest.mark.parametrize(("value", "must"), BAD_SECONDS)
async def test_bad_hook_timeout_is_a_config_error_before_anything_starts(
    value: Any, must: str
) -> None:
    app = App(name="svc")
    opened: list[str] = []

    @asynccontextmanager
    async def db() -> AsyncIterator[None]:
        opened.append("db")
        yield

    app.resource(db)

    @app.after_stop(timeout=value)
    def flush() -> None: ...

    report = await app.serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error == (
        f"@app.after_stop({__name__}.{flush.__qualname__}): timeout={value!r}: must be {must}"
    )
    assert opened == []


async def test_bad_hook_timeout_once_the_app_runs_raises_at_once() -> None:
    app = App(name="svc")
    raised: list[str] = []

    @app.after_start
    def late() -> None:
        try:
            app.before_stop(timeout=-1)(lambda: None)
        except ConfigError as exc:
            raised.append(str(exc))
        app.stop()

    report = await app.serve()
    (error,) = raised
    assert error.endswith("timeout=-1: must be a positive number of seconds")
    assert report.step("before_stop").waited_for == [], "the refused hook was not added"


# -- each step's budget ------------------------------------------------------------------------


async def test_each_stop_step_records_the_budget_it_was_given() -> None:
    app = App(name="svc", stop_timeout=10, cleanup_reserve=2, cancel_grace=0.5)
    app.resource(leaky([]), name="db")

    @app.after_stop
    def after() -> None: ...

    stop_when_ready(app)
    report = await app.serve()
    budgets = {r.name: r.budget for r in report.stop}
    # Skipped steps were given nothing.
    assert budgets["deregister"] is None
    assert budgets["drain"] is None
    # Before the cleanup: what is left of stop_timeout less the reserve.
    for name in ("not_ready", "before_stop", "stop_servers"):
        assert budgets[name] == pytest.approx(8.0, abs=0.1), name
    # The tasks step: its wait, the cancel grace, and the grace again as its backstop.
    assert budgets["tasks"] == pytest.approx(8.5, abs=0.1)
    # after_stop keeps half the reserve for the resources; those get the rest less the backstop.
    assert budgets["after_stop"] == pytest.approx(9.0, abs=0.1)
    assert budgets["resources"] == pytest.approx(9.75, abs=0.1)
    assert report.step("resources", of="start").budget == pytest.approx(30.0, abs=0.1)
    assert [r["budget"] for r in report.as_dict()["stop"]] == [
        None if b is None else round(b, 4) for b in budgets.values()
    ]


def test_report_text_gives_each_steps_budget_beside_its_use() -> None:
    resources = PhaseRecord("resources", offset=0.012, duration=0.104, budget=5.0)
    drain = PhaseRecord("drain", offset=0.0, duration=1.5, budget=24.75, note="quiet for 1s")
    skipped = PhaseRecord("deregister", offset=0.0, outcome=Outcome.SKIPPED, note="not registered")
    text = Report(app="svc", id="i-1", stop=[drain, skipped, resources]).to_text()
    assert "  stop  +  0.012s resources       0.104s of  5.00s ok" in text.splitlines()
    assert "  stop  +  0.000s drain           1.500s of 24.75s ok (quiet for 1s)" in text
    assert "  stop  +  0.000s deregister      0.000s skipped (not registered)" in text
