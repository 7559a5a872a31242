"""The server contract: every adapter is pinned to it, statically (mypy) and at run time.

Also the shape of the import graph the contract exists for: nothing under
``servers/`` (nor ``config.py``) imports the App, and every adapter fails a
busy port with the same kind of error.
"""

from __future__ import annotations

import ast
import asyncio
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

import quiesce
from quiesce import App, BaseServer, ExitCode, Lifecycle, Server, StartError, State
from quiesce.servers.admin import AdminServer
from quiesce.servers.asgi import HTTPServer
from quiesce.servers.contract import (
    Attachable,
    Checkable,
    CountsInFlight,
    ExitsOnItsOwn,
    LoopBound,
    OwnStopTimeout,
    StopsLast,
)
from quiesce.servers.grpc import GRPCServer
from quiesce.servers.listening import ListeningServer, advertised_host
from quiesce.servers.stream import StreamServer

SRC = Path(quiesce.__file__).parent


async def asgi(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never called")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(100))


def grpc_factory() -> grpc.aio.Server:
    return grpc.aio.server()


# Static pins: mypy --strict checks these assignments against the protocols.
_http: Server = HTTPServer(asgi)
_grpc: Server = GRPCServer(grpc_factory)
_tcp: Server = StreamServer(echo)
_attach: Attachable = HTTPServer(asgi)
_check: Checkable = GRPCServer(grpc_factory)
_timeout: OwnStopTimeout = StreamServer(echo)
_exits: ExitsOnItsOwn = GRPCServer(grpc_factory)
_load: CountsInFlight = HTTPServer(asgi)
_bound: LoopBound = GRPCServer(grpc_factory)
_admin: Server = AdminServer()
_admin_attach: Attachable = AdminServer()
_admin_load: CountsInFlight = AdminServer()
_last: StopsLast = AdminServer()

ADAPTERS: dict[str, Callable[..., ListeningServer]] = {
    "http": lambda **kw: HTTPServer(asgi, **kw),
    "grpc": lambda **kw: GRPCServer(grpc_factory, **kw),
    "tcp": lambda **kw: StreamServer(echo, **kw),
    "admin": lambda **kw: AdminServer(**kw),
}


@pytest.mark.parametrize("kind", ADAPTERS)
def test_every_adapter_implements_the_contract_and_its_optional_parts(kind: str) -> None:
    server = ADAPTERS[kind](name="s", depends_on=["db"], stop_timeout=2.5)
    assert isinstance(server, Server)
    assert isinstance(server, BaseServer)
    assert isinstance(server, Checkable)
    assert isinstance(server, Attachable)
    assert isinstance(server, OwnStopTimeout)
    assert isinstance(server, StopsLast) is (kind == "admin")
    # One place set the common options up, the same way for every kind.
    assert (server.name, tuple(server.depends_on), server.stop_timeout) == ("s", ("db",), 2.5)
    assert server.lifecycle is None
    if kind != "tcp":
        assert isinstance(server, ExitsOnItsOwn)
        assert isinstance(server, CountsInFlight)
        assert server.in_flight == 0


@pytest.mark.parametrize("kind", ADAPTERS)
async def test_every_adapter_fails_a_busy_port_with_the_same_start_error(kind: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ADAPTERS[kind](port=port, name="s")
        with pytest.raises(StartError) as info:
            await server.start()
        await server.stop(1)
    assert str(info.value) == (
        f"server 's' failed to start: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


@pytest.mark.parametrize("kind", ADAPTERS)
async def test_every_adapter_fails_a_busy_port_in_an_app_with_one_line(kind: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        report = await App(name="x", servers=[ADAPTERS[kind](port=port, name="s")]).serve()
    assert report.exit_code == ExitCode.FAILED
    assert report.error == (
        f"server 's' failed to start: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, under TYPE_CHECKING too."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SRC.rglob("*.py")):
        yield str(path.relative_to(SRC)), path


@pytest.mark.parametrize(
    ("module", "path"),
    [(m, p) for m, p in modules() if m.startswith("servers/") or m == "config.py"],
    ids=lambda v: str(v),
)
def test_servers_and_config_never_import_the_app(module: str, path: Path) -> None:
    imported = imports_of(path)
    assert "quiesce.app" not in imported
    assert "quiesce.App" not in imported
    if module == "config.py":  # the checks sit below the servers, never above them
        assert not any(name.startswith("quiesce.servers") for name in imported)


class Ticker(BaseServer):
    """A server written as a user would: a subclass of BaseServer, its defaults kept."""

    def __init__(self) -> None:
        self.name = "ticker"
        self.stopped_with: float | None = None

    async def start(self) -> None:
        assert self.lifecycle is not None
        assert self.lifecycle.state is State.STARTING

    async def stop(self, timeout: float) -> Sequence[str]:
        self.stopped_with = timeout
        return []


async def test_a_base_server_subclass_runs_on_its_defaults() -> None:
    ticker = Ticker()
    app = App(name="x", servers=[ticker], stop_timeout=4.0)
    seen: list[tuple[bool, bool]] = []

    @app.after_start
    def ready() -> None:
        assert ticker.lifecycle is app.lifecycle
        seen.append((app.lifecycle.is_serving, app.lifecycle.ready.is_set()))
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    assert seen == [(True, True)]
    assert ticker.endpoints() == ()
    # No stop_timeout of its own: it got what was left of the stop budget (4 s less the
    # cleanup reserve of 0.8 s and the server margin), not some default of the base class.
    assert ticker.stopped_with is not None
    assert 2.5 < ticker.stopped_with < 3.2


async def test_a_server_is_attached_to_one_live_app_at_a_time() -> None:
    ticker = Ticker()
    first = Lifecycle("first")
    ticker.attach(first)
    first.state = State.RUNNING
    report = await App(name="second", servers=[ticker]).serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error == "server 'ticker' is in use by App 'first': one App at a time"
    first.state = State.STOPPED  # once the first has stopped, the next one may use it
    again = App(name="third", servers=[ticker])
    again.stop()
    assert (await again.serve()).exit_code == ExitCode.OK
    assert ticker.lifecycle is again.lifecycle


@pytest.mark.parametrize("kind", ADAPTERS)
def test_a_wildcard_bind_is_advertised_as_this_machines_address(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the host name resolves to is the machine's business: a fake of that lookup
    # (pure logic; nothing is bound or sent).
    def resolve(host: str, port: object, family: int = 0, *args: object) -> list[Any]:
        addresses = ["127.0.1.1", "10.1.2.3"] if family == socket.AF_INET else ["::1", "fd00::7"]
        return [(family, socket.SOCK_STREAM, 6, "", (a, 0)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    server = ADAPTERS[kind](host="0.0.0.0", port=8123)
    assert server.endpoints()[0].endswith("://10.1.2.3:8123")
    assert server.address == "0.0.0.0:8123"  # it still binds every interface
    assert ADAPTERS[kind](host="::", port=1).endpoints()[0].endswith("://[fd00::7]:1")
    assert ADAPTERS[kind](host="127.0.0.2", port=1).endpoints()[0].endswith("://127.0.0.2:1")
    assert advertised_host("localhost") == "localhost"
