"""The server contract: the :class:`Server` protocol, its optional parts, and :class:`BaseServer`.

Kratos' ``transport.Server`` has ``Start`` and ``Stop``; ours adds what a
bounded, observable stop needs: readiness (``drain``), the real endpoints, and
the dependency names that order start and stop. A server never sees the App:
it is handed a :class:`~quiesce.lifecycle.Lifecycle` once, before the start.

Each optional part is a ``runtime_checkable`` protocol of its own, so that the
app, the group and the checks ask ``isinstance`` instead of probing names.
:class:`BaseServer` has the common ones with no-op defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from quiesce.errors import ConfigError
from quiesce.lifecycle import Lifecycle

__all__ = [
    "Accountable",
    "Attachable",
    "BaseServer",
    "Checkable",
    "CountsInFlight",
    "ExitsOnItsOwn",
    "LoopBound",
    "OwnStopTimeout",
    "Readiness",
    "Server",
    "StopsLast",
    "bound_loop",
    "check_servers",
    "own_stop_timeout",
]


@runtime_checkable
class Server(Protocol):
    """A server the :class:`~quiesce.App` starts, drains and stops.

    ``name`` and ``depends_on`` are plain attributes, so a server may
    subclass this protocol and set them in its ``__init__``; ``depends_on``
    defaults to none. :class:`BaseServer` is the same with the optional parts
    filled in. The optional parts, each used when present:
    :class:`OwnStopTimeout`, :class:`Checkable`, :class:`Attachable`,
    :class:`ExitsOnItsOwn`, :class:`CountsInFlight`, :class:`LoopBound`,
    :class:`StopsLast`, :class:`Accountable`, :class:`Readiness`.
    """

    #: Unique within the app; used by ``depends_on``, logs and the report.
    name: str
    #: Names of servers (or resources) that must be ready before this one starts.
    depends_on: Sequence[str] = ()

    async def start(self) -> None:
        """Bind and begin accepting; return only once it accepts.

        Raises:
            StartError: naming the server and the cause (any other exception
                is wrapped into one by the app).

        """
        ...

    async def drain(self) -> None:
        """Begin draining: report not ready, keep serving what arrives."""
        ...

    async def stop(self, timeout: float) -> Sequence[str] | None:
        """Stop accepting, finish in-flight work within ``timeout``, then force.

        Returns descriptions of what had to be forced (open connections,
        cancelled calls), or None/empty when everything finished.
        """
        ...

    def endpoints(self) -> Sequence[str]:
        """The URLs it serves on (``http://127.0.0.1:8000``), real ports once started."""
        ...


@runtime_checkable
class OwnStopTimeout(Protocol):
    """A server with its own stop timeout; None inherits the app's remaining stop budget."""

    stop_timeout: float | None


@runtime_checkable
class Checkable(Protocol):
    """A server that checks its own options before anything starts."""

    def check(self) -> None:
        """Raises :class:`~quiesce.ConfigError` for a bad option (the run exits with code 2)."""
        ...


@runtime_checkable
class Attachable(Protocol):
    """A server that wants the app's lifecycle: readiness, ``stopping``, reporting arrivals."""

    def attach(self, lifecycle: Lifecycle) -> None:
        """Called once before the start. Raises :class:`~quiesce.ConfigError` to refuse it."""
        ...


@runtime_checkable
class ExitsOnItsOwn(Protocol):
    """A server that can stop serving by itself; the app then stops with exit code 1."""

    async def wait_closed(self) -> None:
        """Return (or raise) when the server has stopped serving."""
        ...


@runtime_checkable
class CountsInFlight(Protocol):
    """A server that knows how much work it is doing; the report shows it at the stop."""

    @property
    def in_flight(self) -> int:
        """Requests, calls or messages being handled now."""
        ...


@runtime_checkable
class LoopBound(Protocol):
    """A server built for one event loop (a ``grpc.aio.Server`` made at import time)."""

    @property
    def bound_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop it must run on, or None when any loop will do."""
        ...


@runtime_checkable
class StopsLast(Protocol):
    """A server that stops after every other server of the app, whatever ``depends_on`` says.

    An admin server: its metrics and task dump answer through the drain and
    while the other servers stop. Several such servers stop after all the
    others, among themselves in reverse ``depends_on`` order.
    """

    #: True to stop last; False stops by ``depends_on`` like any other server.
    stops_last: bool


@runtime_checkable
class Accountable(Protocol):
    """A server that accounts for each unit of work it took (a consumer: each message).

    The report shows the account of each such server after the stop, under its name.
    """

    def account(self) -> dict[str, int | list[str]]:
        """Counts by what happened (``acked``, ``requeued``...); a list names the items."""
        ...


@runtime_checkable
class Readiness(Protocol):
    """A server whose readiness can change while the app runs (a consumer that lost its broker).

    While one is not ready, ``/readyz`` answers 503 naming it, and the admin
    metrics show it (``quiesce_server_ready``).
    """

    @property
    def ready(self) -> bool:
        """True while it does its work (connected, consuming, not draining)."""
        ...


class BaseServer:
    """A :class:`Server` to subclass: plain attributes and no-op defaults.

    Override :meth:`start`, :meth:`stop` and, for a server that listens,
    :meth:`endpoints`; :meth:`drain` and :meth:`check` do nothing unless
    overridden. :meth:`attach` keeps the lifecycle in :attr:`lifecycle` and
    refuses a second app that runs while the first still does.
    """

    name: str = "server"
    depends_on: Sequence[str] = ()
    stop_timeout: float | None = None
    #: The app's lifecycle once attached; None for a server started on its own.
    lifecycle: Lifecycle | None = None

    def check(self) -> None:
        """Check the options; nothing to check by default."""

    def attach(self, lifecycle: Lifecycle) -> None:
        """Keep ``lifecycle``.

        Raises:
            ConfigError: another app is running this server (one app at a time; a
                server whose app has stopped can serve the next one).

        """
        owner = self.lifecycle
        if owner is not None and owner is not lifecycle and owner.is_live:
            where = f"server {self.name!r}"
            raise ConfigError(f"{where} is in use by App {owner.app!r}: one App at a time")
        self.lifecycle = lifecycle

    async def start(self) -> None:
        """Bind and begin accepting; return only once it accepts."""
        raise NotImplementedError(f"{type(self).__name__}.start()")

    async def drain(self) -> None:
        """Go not-ready; nothing to do by default."""

    async def stop(self, timeout: float) -> Sequence[str] | None:
        """Stop within ``timeout``; returns what had to be cut."""
        raise NotImplementedError(f"{type(self).__name__}.stop()")

    def endpoints(self) -> Sequence[str]:
        """No endpoints by default."""
        return ()


def own_stop_timeout(server: Server) -> float | None:
    """The server's own stop timeout, or None when it has none."""
    return server.stop_timeout if isinstance(server, OwnStopTimeout) else None


def bound_loop(servers: Sequence[object]) -> asyncio.AbstractEventLoop | None:
    """The event loop the first loop-bound server needs, or None."""
    for server in servers:
        if isinstance(server, LoopBound) and (loop := server.bound_loop) is not None:
            return loop
    return None


_REQUIRED = ("name", "depends_on", "start", "drain", "stop", "endpoints")


def check_servers(servers: object) -> None:
    """Check that each server implements :class:`Server`, then its own options.

    A :class:`Checkable` server's ``check()`` is called here, so that its bad
    options fail the run like the app's (exit code 2).

    Raises:
        ConfigError: not a list, or naming the first server that is not one, or its bad option.

    """
    if not isinstance(servers, Sequence) or isinstance(servers, str | bytes):
        raise ConfigError(f"servers={servers!r}: must be a list of quiesce.Server objects")
    for i, server in enumerate(servers):
        if not isinstance(server, Server):
            missing = ", ".join(m for m in _REQUIRED if not hasattr(server, m))
            raise ConfigError(
                f"servers[{i}]: {type(server).__name__} is not a quiesce.Server (missing {missing})"
            )
        if isinstance(server, Checkable):
            server.check()
