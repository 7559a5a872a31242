"""quiesce.postgres against a real PostgreSQL (``postgres_dsn``): the pool as a resource.

It opens before the servers and closes after them; its close waits for the
connections still checked out (a write in flight at the stop lands), then
terminates and names each one it cut: the task, since when, the acquiring line.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from conftest import Service
from quiesce import App, BaseServer, ExitCode, Outcome
from quiesce.postgres import PostgresPool, postgres_pool
from quiesce.resources import Resource
from quiesce.servers.stream import StreamServer

HERE = Path(__file__)
T = TypeVar("T")


def blocking(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coro()`` to the end on a loop of its own, in a thread: usable from any test."""
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(asyncio.run(coro())), daemon=True)
    thread.start()
    thread.join(timeout=15)
    assert out, "PostgreSQL did not answer within 15 s"
    return out[0]


def sql(dsn: str, query: str) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            rows: list[Any] = await conn.fetch(query, timeout=5)
            return rows
        finally:
            await conn.close()

    return blocking(run)


@pytest.fixture
def table(postgres_dsn: str) -> Iterator[str]:
    """A table of its own for the test: ``(line text)``, dropped after."""
    name = f"quiesce_pool_{uuid.uuid4().hex[:12]}"
    sql(postgres_dsn, f"CREATE TABLE {name} (line text)")
    yield name
    sql(postgres_dsn, f"DROP TABLE IF EXISTS {name}")


def lines(dsn: str, table: str) -> list[str]:
    return [row["line"] for row in sql(dsn, f"SELECT line FROM {table} ORDER BY line")]


def line_of(marker: str) -> str:
    """``tests/test_postgres_pool.py:<n>``: the line of this file that carries ``marker``."""
    source = HERE.read_text().splitlines()
    (n,) = [n for n, text in enumerate(source, 1) if text.rstrip().endswith(f"# {marker}")]
    return f"tests/test_postgres_pool.py:{n}"


def app_with_pool(dsn: str, **resource: Any) -> tuple[App, Resource[PostgresPool]]:
    app = App(name="svc", stop_timeout=10)
    db = app.resource(postgres_pool(dsn, min_size=1, max_size=4), name="db", **resource)
    return app, db


def untracked(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task the app does not track (a request handler of some other framework)."""
    return asyncio.get_running_loop().create_task(coro, name=name)


async def bounded(what: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        await what.wait()


# -- the order -------------------------------------------------------------------------


async def test_pool_opens_before_the_servers_start_and_closes_after_they_stop(
    postgres_dsn: str,
) -> None:
    app, db = app_with_pool(postgres_dsn)
    seen: list[tuple[str, int]] = []
    pools: list[PostgresPool] = []

    class Probe(BaseServer):
        name = "probe"

        async def start(self) -> None:
            pools.append(db.value)
            seen.append(("start", await db.value.fetchval("SELECT 1")))

        async def stop(self, timeout: float) -> Sequence[str]:
            seen.append(("stop", await db.value.fetchval("SELECT 2")))
            return []

    app.add_server(Probe())
    app.after_start(app.stop)
    report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert seen == [("start", 1), ("stop", 2)]
    assert not db.is_open
    assert pools[0].pool.is_closing(), "closed at the stop"
    assert report.step("resources").waited_for == ["resource db"]


async def test_handler_in_flight_at_the_stop_still_writes_before_the_pool_closes(
    postgres_dsn: str, table: str
) -> None:
    app, db = app_with_pool(postgres_dsn)
    acquired = asyncio.Event()
    closing_seen: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().strip()
        async with db.value.acquire() as conn:
            acquired.set()
            await app.stopping
            await asyncio.sleep(0.2)  # the write is still in flight when the stop begins
            closing_seen.append(db.value.pool.is_closing())
            await conn.execute(f"INSERT INTO {table} (line) VALUES ($1)", line)
        writer.write(b"ok\n")
        await writer.drain()

    server = StreamServer(handler, name="tcp")
    app.add_server(server)
    answers: list[bytes] = []

    @app.after_start
    async def client() -> None:
        async def send() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"order-1\n")
            await writer.drain()
            answers.append(await reader.readline())
            writer.close()

        _ = untracked(send(), "client")
        await bounded(acquired)
        app.stop("write in flight")

    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert answers == [b"ok\n"]
    assert closing_seen == [False], "the pool closes after the servers, not under the handler"
    assert lines(postgres_dsn, table) == ["order-1"]


# -- the close: wait, then terminate and name ------------------------------------------


async def test_leaked_connection_is_named_with_its_task_and_line_and_the_stop_exits_3(
    postgres_dsn: str,
) -> None:
    app, db = app_with_pool(postgres_dsn, close_timeout=0.5)
    held = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def hold() -> None:
        async with db.value.acquire():  # the leaked acquire
            held.set()
            await asyncio.Event().wait()

    pools: list[PostgresPool] = []

    @app.after_start
    async def leak() -> None:
        pools.append(db.value)
        tasks.append(untracked(hold(), "handler-7"))
        await bounded(held)
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    tasks[0].cancel()
    assert report.exit_code == ExitCode.INCOMPLETE, report.to_text()
    resources = report.step("resources")
    assert resources.outcome is Outcome.TIMEOUT
    assert resources.cut[0] == "resource db (close cut at 0.5s)"
    (leak_line,) = resources.cut[1:]
    m = re.fullmatch(
        r"resource db: connection held by task 'handler-7' for (\d+\.\d\d)s, acquired at (\S+)",
        leak_line,
    )
    assert m is not None, leak_line
    assert float(m.group(1)) >= 0.5
    assert m.group(2) == line_of("the leaked acquire")
    assert 0.5 <= resources.duration < 1.0
    assert pools[0].leaks() == [leak_line.removeprefix("resource db: ")]


async def test_connection_released_within_close_timeout_is_waited_for_and_not_cut(
    postgres_dsn: str, table: str
) -> None:
    app, db = app_with_pool(postgres_dsn, close_timeout=5)
    held = asyncio.Event()
    closing_seen: list[bool] = []

    async def late_writer() -> None:
        async with db.value.acquire() as conn:
            held.set()
            await app.stopping
            await asyncio.sleep(0.3)  # still writing when the resources step begins
            closing_seen.append(db.value.pool.is_closing())
            await conn.execute(f"INSERT INTO {table} (line) VALUES ('late')")

    pools: list[PostgresPool] = []

    @app.after_start
    async def start_it() -> None:
        pools.append(db.value)
        _ = untracked(late_writer(), "late-writer")
        await bounded(held)
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    resources = report.step("resources")
    assert resources.cut == []
    assert closing_seen == [True], "the write landed while the pool was closing"
    assert resources.duration >= 0.15, "the close waited for the release"
    assert lines(postgres_dsn, table) == ["late"]
    assert pools[0].leaks() == []


async def test_connection_awaited_and_never_released_names_the_ended_task(
    postgres_dsn: str,
) -> None:
    app, db = app_with_pool(postgres_dsn, close_timeout=0.3)

    async def forgetful() -> None:
        _ = await db.value.acquire()  # the forgotten acquire

    @app.after_start
    async def start_it() -> None:
        await untracked(forgetful(), "forgetful")
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.INCOMPLETE, report.to_text()
    leak = report.step("resources").cut[-1]
    assert leak.startswith("resource db: connection held by task 'forgetful' for "), leak
    assert leak.endswith(
        f"acquired at {line_of('the forgotten acquire')} (the task ended without releasing it)"
    )


async def test_query_shortcut_in_flight_is_cut_and_named_at_its_caller_line(
    postgres_dsn: str,
) -> None:
    handed_out = asyncio.Event()

    async def setup(conn: Any) -> None:  # asyncpg calls it as it hands out a connection
        handed_out.set()

    app = App(name="svc", stop_timeout=10)
    pool = postgres_pool(postgres_dsn, min_size=1, max_size=4, setup=setup)
    db = app.resource(pool, name="db", close_timeout=0.3)
    failures: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []

    async def export() -> None:
        try:
            await db.value.fetchval("SELECT pg_sleep(5)")  # the slow query
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            failures.append(exc)

    @app.after_start
    async def start_it() -> None:
        tasks.append(untracked(export(), "report-export"))
        await bounded(handed_out)
        assert len(db.value.held()) == 1
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
        await tasks[0]
    assert report.exit_code == ExitCode.INCOMPLETE, report.to_text()
    leak = report.step("resources").cut[-1]
    assert "task 'report-export'" in leak
    assert leak.endswith(f"acquired at {line_of('the slow query')}")
    assert len(failures) == 1, "the terminated connection failed the query: a real cut"
    assert report.step("resources").duration < 1.0


async def test_held_names_who_holds_a_connection_now(postgres_dsn: str) -> None:
    app, db = app_with_pool(postgres_dsn)
    seen: list[list[str]] = []

    @app.after_start
    async def look() -> None:
        async with db.value.acquire():  # the looking acquire
            seen.append(db.value.held())
        seen.append(db.value.held())
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    (now,), after = seen
    assert re.fullmatch(r"connection held by task '.+' for \d+\.\d\ds, acquired at \S+", now)
    assert now.endswith(line_of("the looking acquire"))
    assert after == []


# -- the start ---------------------------------------------------------------------------


async def test_unreachable_postgres_fails_the_start_naming_the_resource_never_the_password() -> (
    None
):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    app = App(name="svc")
    db = app.resource(postgres_pool(f"postgresql://postgres:s3cret@127.0.0.1:{port}/test"))
    assert db.name == "postgres"
    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.FAILED
    assert report.error is not None
    assert report.error.startswith("resource 'postgres' failed to start: "), report.error
    assert "s3cret" not in report.to_json()
    assert "s3cret" not in repr(db.factory)


# -- under a real SIGTERM ------------------------------------------------------------------


def test_sigterm_lets_the_write_in_flight_land_then_closes_the_pool(
    service: Callable[..., Service], postgres_dsn: str, table: str
) -> None:
    svc = service("tests.scenarios.postgres_service", "write_in_flight", postgres_dsn, table)
    svc.wait_for(r"EVENT pool-open 1 ")
    port = int(svc.wait_for(r"EVENT ready (\d+) ").group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"order-7\n")
        svc.wait_for(r"EVENT acquired ")
        svc.signal(signal.SIGTERM)
        answer = client.makefile("rb").readline()
    assert svc.wait() == 0, svc.output
    assert answer == b"ok\n"
    assert lines(postgres_dsn, table) == ["order-7"]
    names = [what for what, _ in svc.events()]
    assert names.index("written") < names.index("after-stop pool-closing=False")
    resources = svc.phase("resources")
    assert (resources["outcome"], resources["cut"]) == ("ok", [])
    assert resources["budget"] > 5
