"""The App in-process through ``await app.serve()``: configuration, hooks, tracked work, report."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import stat
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import the_cut
from quiesce import App, ConfigError, ExitCode, Outcome, Server, State, StoppedError
from quiesce.servers.stream import StreamServer


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()


class Exits(StreamServer):
    """A real TCP server that stops serving on its own once ``exit`` is set."""

    def __init__(self) -> None:
        super().__init__(echo, name="flaky")
        self.exit = asyncio.Event()

    async def wait_closed(self) -> None:
        await self.exit.wait()
        raise ConnectionResetError("listener lost")


def stop_when_ready(app: App, reason: str = "test done") -> None:
    @app.after_start
    def ready() -> None:
        app.stop(reason)


async def test_serve_returns_the_report_and_never_exits() -> None:
    app = App(name="svc", servers=[StreamServer(echo, name="tcp")])
    stop_when_ready(app)
    report = await app.serve()
    assert report is app.report
    assert report.exit_code == ExitCode.OK
    assert report.reason == "test done"
    assert [r.name for r in report.stop] == [
        "not_ready",
        "before_stop",
        "deregister",
        "drain",
        "stop_servers",
        "tasks",
        "after_stop",
        "resources",
    ]
    assert app.state is State.STOPPED
    assert app.stopping.is_set()
    assert app.stopped.is_set()


async def test_info_lists_real_endpoints_once_bound() -> None:
    app = App(name="svc", version="1.2.3", metadata={"zone": "eu-1"}, id="fixed")
    app.add_server(StreamServer(echo, name="a"))
    app.add_server(StreamServer(echo, name="b"))
    seen: list[Sequence[str]] = []

    @app.after_start
    def ready() -> None:
        seen.append(app.info.endpoints)
        app.stop()

    assert app.info.endpoints == ()
    await app.serve()
    (endpoints,) = seen
    assert len(endpoints) == 2
    assert all(ep.startswith("tcp://127.0.0.1:") and not ep.endswith(":0") for ep in endpoints)
    assert app.info.id == "fixed"
    assert app.info.metadata == {"zone": "eu-1"}


def test_default_id_is_host_pid_random() -> None:
    import os

    a, b = App(name="x"), App(name="x")
    assert f"-{os.getpid()}-" in a.id
    assert a.id != b.id


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stop_timeout": 0}, "stop_timeout=0: must be a positive"),
        ({"stop_timeout": "30"}, "stop_timeout='30': must be a positive"),
        ({"name": ""}, "name='': an app needs a name"),
        ({"name": 5}, "name=5: an app needs a name"),
        ({"stop_timeout": float("inf")}, "stop_timeout=inf: must be a positive"),
        ({"server_stop_timeout": 0}, "server_stop_timeout=0: must be a positive"),
        ({"registry": object()}, "registry: object is neither a URL nor a quiesce.Registry"),
        ({"drain_delay": -1}, "drain_delay=-1: must be zero or more"),
        ({"drain_delay": 29, "stop_timeout": 30}, "drain_delay=29s does not fit stop_timeout=30s"),
        ({"registry": "zookeeper://127.0.0.1:2181"}, "unknown registry scheme 'zookeeper'"),
        ({"signals": [12345]}, "12345 is not a signal"),
        ({"signals": [signal.SIGKILL]}, "signals: SIGKILL cannot be caught"),
        ({"signals": [signal.SIGTERM, signal.SIGSTOP]}, "signals: SIGSTOP cannot be caught"),
        ({"signals": None}, "signals=None: must be a list of signals"),
        ({"signals": 15}, "signals=15: must be a list of signals"),
        ({"stop_timeout": 1e10}, "stop_timeout=10000000000.0: must be at most 86400 seconds"),
        ({"hook_timeout": 1e10}, "hook_timeout=10000000000.0: must be at most 86400 seconds"),
        ({"servers": None}, "servers=None: must be a list of quiesce.Server objects"),
        ({"report_file": "/nonexistent-dir/report.json"}, "the directory /nonexistent-dir"),
        ({"report_file": "/"}, "report_file='/': is a directory"),
    ],
)
async def test_bad_configuration_is_exit_2_and_starts_nothing(
    options: dict[str, object], message: str
) -> None:
    server = StreamServer(echo, name="tcp")
    app = App(**{"name": "svc", "servers": [server], **options})  # type: ignore[arg-type]
    report = await app.serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error is not None
    assert message in report.error
    assert report.start == []
    assert report.stop == []
    assert server.endpoints() == ["tcp://127.0.0.1:0"], "nothing was bound"
    assert app.stopped.is_set()


async def test_duplicate_and_unknown_names_are_config_errors() -> None:
    app = App(name="svc", servers=[StreamServer(echo, name="x"), StreamServer(echo, name="x")])
    assert (await app.serve()).error == "server name 'x' is already a server"
    app = App(name="svc", servers=[StreamServer(echo, name="x", depends_on=["db"])])
    assert (await app.serve()).error == "'x' depends on unknown 'db'"


async def test_server_may_depend_on_a_resource() -> None:
    app = App(name="svc", servers=[StreamServer(echo, name="x", depends_on=["db"])])
    app.resource(lambda: asyncio.timeout(None), name="db")
    stop_when_ready(app)
    assert (await app.serve()).exit_code == ExitCode.OK


async def test_every_hook_error_is_kept_and_later_hooks_run() -> None:
    app = App(name="svc")
    ran: list[str] = []

    @app.before_stop
    def first() -> None:
        ran.append("first")
        raise ValueError("first failed")

    @app.before_stop
    async def second() -> None:
        ran.append("second")
        raise KeyError("second failed")

    @app.before_stop
    async def third() -> None:
        ran.append("third")

    stop_when_ready(app)
    report = await app.serve()
    assert ran == ["first", "second", "third"]
    before_stop = report.step("before_stop")
    assert before_stop.outcome is Outcome.ERROR
    assert len(before_stop.errors) == 2
    assert "ValueError: first failed" in before_stop.errors[0]
    assert "KeyError" in before_stop.errors[1]
    assert report.exit_code == ExitCode.INCOMPLETE


async def test_failing_before_start_hook_fails_the_start_and_closes_resources() -> None:
    closed = asyncio.Event()

    @asynccontextmanager
    async def pool() -> AsyncIterator[int]:
        yield 1
        closed.set()

    app = App(name="svc", servers=[StreamServer(echo, name="tcp")])
    app.resource(pool)

    @app.before_start
    def check_schema() -> None:
        raise RuntimeError("schema is behind")

    report = await app.serve()
    assert report.exit_code == ExitCode.FAILED
    assert report.error is not None
    assert "before_start" in report.error
    assert "schema is behind" in report.error
    assert closed.is_set()
    assert app.state is State.STOPPED


async def test_resource_value_is_available_only_while_open() -> None:
    app = App(name="svc")

    @asynccontextmanager
    async def pool() -> AsyncIterator[str]:
        yield "connections"

    db = app.resource(pool, name="db")
    values: list[str] = []

    @app.after_start
    def use() -> None:
        values.append(db.value)
        app.stop()

    with pytest.raises(RuntimeError, match="resource 'db' is not open"):
        _ = db.value
    await app.serve()
    assert values == ["connections"]
    with pytest.raises(RuntimeError, match="not open"):
        _ = db.value


async def test_server_exiting_on_its_own_stops_the_app_with_exit_1() -> None:
    server = Exits()
    app = App(name="svc", servers=[server, StreamServer(echo, name="other")])

    @app.after_start
    def crash_soon() -> None:
        server.exit.set()

    report = await app.serve()
    assert report.exit_code == ExitCode.FAILED
    assert report.error == "server 'flaky' exited: ConnectionResetError: listener lost"


async def test_stop_from_another_thread_is_safe_and_idempotent() -> None:
    app = App(name="svc", servers=[StreamServer(echo, name="tcp")])

    @app.after_start
    async def ready() -> None:
        def from_thread() -> None:
            app.stop("thread one")
            app.stop("thread two")  # may land after the run ended: must not raise

        threading.Thread(target=from_thread).start()

    async with asyncio.timeout(5):
        report = await app.serve()
    assert report.reason == "thread one"
    assert report.exit_code == ExitCode.OK


async def test_stop_before_serve_stops_right_after_start() -> None:
    app = App(name="svc", servers=[StreamServer(echo, name="tcp")])
    app.stop("early")
    report = await app.serve()
    assert report.reason == "early"
    assert report.exit_code == ExitCode.OK


async def test_spawn_after_the_task_phase_raises_and_closes_the_coroutine() -> None:
    app = App(name="svc")
    stop_when_ready(app)
    await app.serve()

    async def late() -> None:
        raise AssertionError("must never run")

    coro = late()
    with pytest.raises(StoppedError, match="spawn"):
        _ = app.spawn(coro)
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED", "closed: no 'never awaited' warning"
    with pytest.raises(StoppedError, match="guard"):
        async with app.guard():
            pass


class ReleasesOnStop(StreamServer):
    """Sets ``release`` as it stops: servers stop just before the tasks phase."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__(echo, name="tcp")
        self.release = release

    async def stop(self, timeout: float) -> list[str]:
        self.release.set()
        return await super().stop(timeout)


async def test_guard_held_in_a_thread_is_waited_for() -> None:
    release = threading.Event()
    app = App(name="svc", servers=[ReleasesOnStop(release)])
    entered = threading.Event()
    done: list[str] = []
    seen_at_after_stop: list[list[str]] = []

    def worker() -> None:
        with app.guard("payment"):
            entered.set()
            release.wait(5)
            # Still inside the guard: an app that did not wait would reach after_stop first.
            threading.Event().wait(0.2)
            done.append("payment")

    @app.after_start
    async def begin() -> None:
        threading.Thread(target=worker).start()
        await asyncio.to_thread(entered.wait, 5)
        app.stop()

    @app.after_stop
    def check() -> None:
        seen_at_after_stop.append(list(done))

    report = await app.serve()
    assert seen_at_after_stop == [["payment"]]
    tasks = report.step("tasks")
    assert tasks.outcome is Outcome.OK
    assert tasks.duration >= 0.15


@pytest.mark.parametrize("period", [0, -1, float("nan"), float("inf"), 1e10, "5"])
async def test_periodic_job_bad_period_is_a_bad_configuration(period: Any) -> None:
    app = App(name="svc")
    app.every(period, lambda: None)
    report = await app.serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error is not None
    assert report.error.startswith(f"every({period!r}, ")
    assert report.start == []


async def test_periodic_job_bad_period_once_running_raises_at_once() -> None:
    app = App(name="svc")
    raised: list[BaseException] = []

    @app.after_start
    def add_job() -> None:
        try:
            app.every(float("nan"), print)
        except ConfigError as exc:
            raised.append(exc)
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    assert [str(e) for e in raised] == [
        "every(nan, print): period=nan: must be a positive number of seconds"
    ]


async def test_serve_twice_is_refused() -> None:
    app = App(name="svc")
    stop_when_ready(app)
    await app.serve()
    with pytest.raises(RuntimeError, match="already started"):
        await app.serve()


class SlowStop(StreamServer):
    def __init__(self, name: str, stop_for: float, stop_timeout: float | None = None) -> None:
        super().__init__(echo, name=name, stop_timeout=stop_timeout)
        self.stop_for = stop_for

    async def stop(self, timeout: float) -> list[str]:
        try:
            await asyncio.sleep(self.stop_for)
        finally:
            # Cut by the app's timeout: still release the listener, as a real server must.
            await super().stop(0)
        return []


async def test_server_stop_that_overruns_its_timeout_is_cut_and_reported() -> None:
    app = App(name="svc", servers=[SlowStop("stuck", 30, stop_timeout=0.2)])
    stop_when_ready(app)
    async with asyncio.timeout(5):
        report = await app.serve()
    phase = report.step("stop_servers")
    assert phase.outcome is Outcome.TIMEOUT
    assert phase.cut == ["server stuck (stop did not return within 0.2s)"]
    assert phase.duration < 1.0
    assert report.exit_code == ExitCode.INCOMPLETE


async def test_resource_value_is_still_readable_while_it_closes() -> None:
    app = App(name="svc")
    seen: list[str] = []

    @asynccontextmanager
    async def pool() -> AsyncIterator[str]:
        yield "connections"
        seen.append(db.value)

    db = app.resource(pool, name="db")
    stop_when_ready(app)
    report = await app.serve()
    assert seen == ["connections"]
    assert report.exit_code == ExitCode.OK


async def test_registry_password_never_reaches_the_report() -> None:
    app = App(name="svc", registry="etcd://quiesce:s3cret@127.0.0.1:1?timeout=0.2")
    report = await app.serve()
    assert report.exit_code == ExitCode.FAILED
    assert report.error is not None
    assert "etcd://quiesce:***@127.0.0.1:1?timeout=0.2" in report.error
    assert "s3cret" not in report.to_json()


async def test_registry_not_required_serves_while_registration_keeps_trying() -> None:
    app = App(
        name="svc",
        servers=[StreamServer(echo, name="tcp")],
        registry="etcd://127.0.0.1:1?timeout=0.2",
        registry_required=False,
        registry_timeout=0.5,
    )
    served: list[bool] = []

    @app.after_start
    def ready() -> None:
        served.append(app.state is State.RUNNING)
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    assert served == [True]
    assert report.error is None
    (register,) = [r for r in report.start if r.name == "register"]
    assert register.outcome is Outcome.OK


async def test_stop_during_after_start_lets_the_hooks_finish() -> None:
    app = App(name="svc", servers=[StreamServer(echo, name="tcp")])
    ran: list[str] = []

    @app.after_start
    async def first() -> None:
        app.stop("asked early")
        await asyncio.sleep(0.1)
        ran.append("first")

    @app.after_start
    def second() -> None:
        ran.append("second")

    report = await app.serve()
    assert ran == ["first", "second"]
    assert all(r.outcome is Outcome.OK for r in report.start)
    assert report.reason == "asked early"


async def test_something_that_is_not_a_server_is_a_config_error_naming_what_it_lacks() -> None:
    app = App(name="svc", servers=[StreamServer(echo), object()])  # type: ignore[list-item]
    report = await app.serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error == (
        "servers[1]: object is not a quiesce.Server "
        "(missing name, depends_on, start, drain, stop, endpoints)"
    )


def test_hook_that_is_not_callable_is_refused_at_once() -> None:
    app = App(name="svc")
    with pytest.raises(ConfigError, match=r"@app.before_stop: 5 is not a function"):
        app.before_stop(5)  # type: ignore[call-overload]


# -- the inner bound names the cut, on the defaults (issue 7, item 6) --------------


async def held_connection(server: StreamServer) -> asyncio.StreamWriter:
    """Open a connection to ``server`` that its echo handler holds until the client leaves."""
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    return writer


async def test_server_without_its_own_stop_timeout_names_the_connection_it_cut() -> None:
    server = StreamServer(echo, name="sticky")  # no stop_timeout: the app's budget applies
    app = App(name="svc", servers=[server], stop_timeout=2)
    writers: list[asyncio.StreamWriter] = []

    @app.after_start
    async def connect_then_stop() -> None:
        writers.append(await held_connection(server))
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    cut = the_cut(report.step("stop_servers"))
    assert cut.startswith("server sticky: connection from 127.0.0.1:"), cut
    assert report.exit_code == ExitCode.INCOMPLETE
    assert report.stop_duration < 2 + 0.5
    writers[0].close()


async def test_slow_before_stop_hook_on_the_default_hook_timeout_is_named() -> None:
    app = App(name="svc", stop_timeout=2)  # hook_timeout 10 s: the stop's budget is shorter

    @app.before_stop
    async def flush_slowly() -> None:
        await asyncio.sleep(30)

    stop_when_ready(app)
    async with asyncio.timeout(10):
        report = await app.serve()
    cut = the_cut(report.step("before_stop"))
    assert cut.startswith("hook "), cut
    assert "flush_slowly" in cut, cut
    # The later steps still ran, inside the reserve.
    assert [r.name for r in report.stop][-1] == "resources"
    assert report.stop_duration < 2 + 0.5


async def test_server_start_that_never_gets_ready_is_named_at_start_timeout() -> None:
    class NeverReady(StreamServer):
        async def start(self) -> None:
            await asyncio.Event().wait()

    app = App(name="svc", servers=[NeverReady(echo, name="slow")], start_timeout=0.5)
    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.FAILED
    assert report.error == "servers timed out: server slow (not ready within 0.5s, starting)"


async def test_resource_close_that_hangs_is_named_and_the_others_still_close() -> None:
    app = App(name="svc", stop_timeout=1)
    closed: list[str] = []

    @asynccontextmanager
    async def pool() -> AsyncIterator[None]:
        yield
        closed.append("pool")

    @asynccontextmanager
    async def hangs() -> AsyncIterator[None]:
        yield
        await asyncio.Event().wait()

    app.resource(pool, name="pool")
    app.resource(hangs, name="hangs")
    stop_when_ready(app)
    async with asyncio.timeout(10):
        report = await app.serve()
    cut = the_cut(report.step("resources"))
    assert cut.startswith("resource hangs (close cut at ")
    assert closed == ["pool"]
    assert report.stop_duration < 1 + 0.2


# -- the report file (item 10) ------------------------------------------------------


async def test_report_file_is_written_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    app = App(name="svc", report_file=path)
    stop_when_ready(app)
    await app.serve()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert '"exit_code": 0' in path.read_text()


async def test_report_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / "report.json").symlink_to(target)
    app = App(name="svc", report_file=tmp_path / "report.json")
    report = await app.serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error is not None
    assert report.error.endswith("is a symbolic link")
    assert target.read_text() == "keep me"


async def test_report_file_that_fails_at_the_end_keeps_the_exit_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    app = App(name="svc", report_file=folder / "report.json")

    @app.after_start
    def remove_the_folder() -> None:
        os.rmdir(folder)
        app.stop()

    with caplog.at_level(logging.ERROR, "quiesce.lifecycle"):
        report = await app.serve()
    assert report.exit_code == ExitCode.OK
    assert app.stopped.is_set()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"cannot write the report to {folder / 'report.json'}: ")
    assert caplog.records[0].exc_info is None


# -- a server written by subclassing the protocol (item 13) ---------------------------


class Mine(Server):
    """The natural way to write a server: subclass the protocol, set plain attributes."""

    def __init__(self) -> None:
        self.name = "mine"
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def drain(self) -> None:
        pass

    async def stop(self, timeout: float) -> list[str]:
        return []

    def endpoints(self) -> list[str]:
        return ["tcp://127.0.0.1:1"]


async def test_server_protocol_subclass_with_plain_attributes_runs() -> None:
    mine = Mine()
    assert isinstance(mine, Server)
    assert mine.depends_on == ()
    app = App(name="svc", servers=[mine])
    stop_when_ready(app)
    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    assert mine.started


async def test_name_that_would_escape_its_etcd_prefix_is_a_bad_configuration() -> None:
    app = App(name="orders/admin", registry="etcd://127.0.0.1:1")  # never contacted
    report = await app.serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error is not None
    assert "contains '/'" in report.error
