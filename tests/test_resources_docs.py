"""docs/resources.md's examples, run as they stand (against the local PostgreSQL for the pool)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from quiesce import App, ExitCode

PAGE = Path(__file__).resolve().parent.parent / "docs" / "resources.md"


def example(marker: str) -> str:
    """The page's Python block that contains ``marker``."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    (found,) = [block for block in blocks if marker in block]
    return found


#: The DSN the page's example shows; the test runs it against ``postgres_dsn``.
SHOWN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def run(*markers: str, dsn: str = SHOWN_DSN) -> dict[str, Any]:
    scope: dict[str, Any] = {"__name__": "orders"}
    for marker in markers:
        exec(example(marker).replace(SHOWN_DSN, dsn), scope)
    return scope


async def test_declaring_example_runs_with_its_close_timeout_and_hook_timeouts() -> None:
    scope = run("async def make_cache", "async def checkpoint")
    app: App = scope["app"]
    assert scope["cache"].close_timeout == 5
    assert scope["cache"].name == "make_cache"
    timeouts = {e.fn.__name__: e.timeout for entries in app._hooks.groups.values() for e in entries}
    assert timeouts == {
        "sync_to_disk": 20,
        "stop_consuming": None,
        "checkpoint": 60,
        "close_files": 5,
    }

    @app.after_start
    def ready() -> None:
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert report.step("after_stop").waited_for == [
        "orders.sync_to_disk",
        "orders.checkpoint",
        "orders.close_files",
    ]


async def test_outbox_example_names_the_message_it_did_not_send() -> None:
    scope = run("class Outbox")
    app: App = scope["app"]

    @app.after_start
    def leave_one() -> None:
        scope["box"].value.unsent.append("m-17")
        app.stop()

    report = await app.serve()
    assert report.step("resources").cut == ["resource outbox: message m-17 not sent"]
    assert report.exit_code == ExitCode.INCOMPLETE


async def test_postgres_example_counts_sessions_and_stops_clean(postgres_dsn: str) -> None:
    scope = run("postgres_pool(", dsn=postgres_dsn)
    assert SHOWN_DSN in example("postgres_pool(")
    app: App = scope["app"]
    counted: list[int] = []

    @app.after_start
    async def count() -> None:
        counted.append(await scope["count_sessions"]())
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert counted[0] >= 1
    assert report.step("resources").waited_for == ["resource db"]


def test_the_report_lines_shown_have_the_reports_own_shape() -> None:
    shown = re.search(r"```text\n(  stop .*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert shown is not None
    step = re.compile(r"  stop  \+ +\d+\.\d{3}s \S+ +\d+\.\d{3}s of +\d+\.\d\ds \w+")
    for line in shown.group(1).splitlines():
        assert step.fullmatch(line) or line.startswith("      "), line
