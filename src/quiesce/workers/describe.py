"""What the supervisor knows of the App: its description, and the sockets it binds for it.

The *describe* child loads the target and sends :func:`describe` of its App;
the supervisor reads it back as a :class:`Description` and binds what it
lists (:func:`bind`): each HTTP server's socket once, for every worker to
serve on; for each gRPC server a placeholder that holds the port (grpcio
cannot serve on a given socket: each worker binds it with ``SO_REUSEPORT``).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quiesce.drain import Drain
from quiesce.errors import ConfigError, StartError
from quiesce.registry import Registry
from quiesce.report import ExitCode
from quiesce.servers.listening import ListeningServer
from quiesce.workers.child import REAP_TIMEOUT, Spawn, Worker, exit_text

__all__ = ["Description", "Listener", "ServerSpec", "ask", "bind", "describe", "inherited"]

#: uvicorn's default listen backlog, when an HTTP server does not set its own.
DEFAULT_BACKLOG = 2048


def describe(app: Any) -> dict[str, Any]:
    """What the supervisor needs of ``app`` (a checked :class:`~quiesce.App`), as JSON data.

    Raises:
        ConfigError: a server or an option that workers cannot share: a
            listening server other than HTTP and gRPC, or a registry given as
            an object rather than a URL.

    """
    if app.registry is not None and not isinstance(app.registry, str):
        kind = type(app.registry).__name__ if isinstance(app.registry, Registry) else "object"
        raise ConfigError(
            f"registry={kind}: with --workers the supervisor registers the instance, "
            "so the registry must be a URL"
        )
    drain = app.drain_delay
    return {
        "name": app.name,
        "version": app.version,
        "id": app.id if "id" in app._given else None,
        "metadata": dict(app.metadata),
        "drain_delay": drain if not isinstance(drain, Drain) else vars(drain),
        "stop_timeout": app.stop_timeout,
        "start_timeout": app.start_timeout,
        "registry": app.registry,
        "registry_timeout": app.registry_timeout,
        "registry_required": app.registry_required,
        "report_file": None if app.report_file is None else str(app.report_file),
        "servers": [spec for server in app.servers if (spec := _server(server)) is not None],
    }


def _server(server: object) -> dict[str, Any] | None:
    if not isinstance(server, ListeningServer):
        return None  # a consumer: nothing to bind
    asgi = sys.modules.get("quiesce.servers.asgi")
    grpc = sys.modules.get("quiesce.servers.grpc")
    admin = sys.modules.get("quiesce.servers.admin")
    if asgi is not None and isinstance(server, asgi.HTTPServer):
        kind = "admin" if admin is not None and isinstance(server, admin.AdminServer) else "http"
        backlog = server.uvicorn_options.get("backlog", DEFAULT_BACKLOG)
    elif grpc is not None and isinstance(server, grpc.GRPCServer):
        kind, backlog = "grpc", 0
    else:
        raise ConfigError(
            f"{server.where}: a {type(server).__name__} cannot share its socket between "
            "workers (HTTP and gRPC servers can); run it without --workers"
        )
    return {
        "name": server.name,
        "kind": kind,
        "host": server.host,
        "port": server.port,
        "backlog": backlog,
    }


async def ask(spawn: Spawn, timeout: float, waited: list[str]) -> Description | int:
    """Start a describe child with ``spawn`` and read its :class:`Description`.

    Returns the child's exit code instead (1: the target cannot be loaded, 2: a
    bad option) when it failed and said why: its one line is on stderr already.
    ``waited`` gets the child's name.

    Raises:
        StartError: the child took longer than ``timeout`` seconds (it is killed),
            or ended in another way.

    """
    child = await Worker.start(spawn, 0)
    waited.append(f"describe child {child.pid}")
    try:
        if not await child.wait(timeout):
            raise StartError("target", f"loading it took longer than start_timeout={timeout:g}s")
    finally:
        if child.running:
            child.kill()
            await child.wait(REAP_TIMEOUT)
    await child.heard()
    code = child.exited.result()
    if code in (ExitCode.FAILED, ExitCode.CONFIG) and child.error is not None:
        return code
    if code != 0 or child.description is None:
        raise StartError("target", f"the describe child ended with {exit_text(code)}")
    try:
        return Description.of(child.description)
    except (KeyError, TypeError, ValueError) as exc:
        raise StartError("target", f"the describe child said something else: {exc!r}") from None


@dataclass(frozen=True)
class ServerSpec:
    """One listening server of the App, as the describe child saw it."""

    name: str
    #: ``http``, ``admin`` (an AdminServer, also HTTP) or ``grpc``.
    kind: str
    host: str
    port: int
    backlog: int


@dataclass(frozen=True)
class Description:
    """The App the workers run, as the supervisor sees it (it never imports it)."""

    name: str
    version: str
    id: str | None
    metadata: dict[str, str]
    drain_delay: float | Drain
    stop_timeout: float
    start_timeout: float
    registry: str | None
    registry_timeout: float
    registry_required: bool
    report_file: str | None
    servers: tuple[ServerSpec, ...]

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Description:
        """Read back what :func:`describe` sent.

        Raises:
            KeyError, TypeError, ValueError: not what :func:`describe` sends.

        """
        drain = data["drain_delay"]
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            id=None if data["id"] is None else str(data["id"]),
            metadata={str(k): str(v) for k, v in data["metadata"].items()},
            drain_delay=Drain(**drain) if isinstance(drain, dict) else float(drain),
            stop_timeout=float(data["stop_timeout"]),
            start_timeout=float(data["start_timeout"]),
            registry=data["registry"],
            registry_timeout=float(data["registry_timeout"]),
            registry_required=bool(data["registry_required"]),
            report_file=data["report_file"],
            servers=tuple(ServerSpec(**spec) for spec in data["servers"]),
        )

    @property
    def has_metrics(self) -> bool:
        """Whether the App serves metrics (an admin server): they then span every worker."""
        return any(spec.kind == "admin" for spec in self.servers)


@dataclass
class Listener:
    """What the supervisor holds for one server: a listening socket, or a port placeholder."""

    spec: ServerSpec
    sock: socket.socket
    #: The real port (the system's pick for port 0).
    port: int

    @property
    def shared(self) -> bool:
        """True for a listening socket the workers inherit (HTTP); False for gRPC's placeholder."""
        return self.spec.kind != "grpc"

    @property
    def address(self) -> str:
        """``host:port`` as the worker's server names its own address."""
        return _as_server(self.spec, self.port).address

    def close(self) -> None:
        """Close the supervisor's descriptor (the workers keep theirs)."""
        self.sock.close()


def _as_server(spec: ServerSpec, port: int) -> ListeningServer:
    # Its address, its advertised endpoint and its "cannot listen" line, said as a server says them.
    return ListeningServer(host=spec.host, port=port, name=spec.name)


def bind(specs: Sequence[ServerSpec]) -> list[Listener]:
    """Bind every server's socket (HTTP: listening; gRPC: a placeholder holding the port).

    Raises:
        StartError: a port cannot be bound (the others are closed), in the words
            a single process would use: ``server 'http' failed to start: cannot
            listen on 127.0.0.1:8000: Address already in use``.

    """
    listeners: list[Listener] = []
    try:
        for spec in specs:
            listeners.append(_bind(spec))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _bind(spec: ServerSpec) -> Listener:
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if spec.kind == "grpc":
            # Never listening: it only keeps the port for the workers' own SO_REUSEPORT
            # sockets (and makes a port another program holds fail here, once).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((spec.host, spec.port))
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((spec.host, spec.port))
            sock.listen(spec.backlog)
    except OSError as exc:
        sock.close()
        raise _as_server(spec, spec.port).cannot_listen(exc) from exc
    return Listener(spec, sock, sock.getsockname()[1])


def inherited(listeners: Sequence[Listener]) -> str:
    """The :data:`~quiesce.servers.listening.INHERITED_SOCKETS` value for these listeners."""
    return ",".join(f"{x.address}={x.sock.fileno()}" for x in listeners if x.shared)
