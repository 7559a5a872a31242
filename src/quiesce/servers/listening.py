"""What every server on ``host:port`` shares: its options, their checks, its address, its errors.

The HTTP, gRPC and TCP adapters subclass :class:`ListeningServer`; so will
every later kind that listens. A busy port fails each of them the same way:
``server 'http' failed to start: cannot listen on 127.0.0.1:8000: Address
already in use``.

Under ``quiesce run --workers N`` the supervisor binds the HTTP sockets once and
its workers inherit them (:func:`inherited_socket`): one accept queue for all.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence

from quiesce.config import check_seconds
from quiesce.errors import ConfigError, StartError
from quiesce.servers.contract import BaseServer

__all__ = [
    "INHERITED_SOCKETS",
    "ListeningServer",
    "advertised_host",
    "check_listen",
    "inherited_socket",
]

#: Addresses that mean "every interface": a bind address, never one to reach a server on.
WILDCARDS = ("0.0.0.0", "::", "")

#: The variable a supervisor names the listening sockets it passed in: ``host:port=fd,...``.
INHERITED_SOCKETS = "QUIESCE_INHERITED_SOCKETS"

#: The inherited descriptors by address, read once from :data:`INHERITED_SOCKETS`.
_inherited: dict[str, int] | None = None


def inherited_socket(address: str, environ: Mapping[str, str] = os.environ) -> socket.socket | None:
    """The listening socket for ``address`` (``host:port``) this process inherited, or None.

    A supervisor (``quiesce run --workers``) binds each HTTP socket once and its
    workers serve on it, so that they share one accept queue. It is handed out
    once: the server that closes it closes this process's last copy, so the
    process no longer holds the socket open behind it (a later server on that
    address binds its own). The variable is read once and then removed from
    ``os.environ``: a process this one starts does not have the descriptors.
    """
    global _inherited
    if _inherited is None:
        _inherited = {}
        for item in environ.get(INHERITED_SOCKETS, "").split(","):
            where, _, number = item.rpartition("=")
            if where and number.isdigit():
                _inherited[where] = int(number)
        os.environ.pop(INHERITED_SOCKETS, None)
    fd = _inherited.pop(address, None)
    return None if fd is None else socket.socket(fileno=fd)


def advertised_host(host: str) -> str:
    """The address others reach a server bound to ``host`` on (what the registry gets).

    ``host`` itself, except for a wildcard bind (``0.0.0.0``, ``::``): then this
    machine's first non-loopback address of that family, found from its host
    name as Kratos' ``host.Extract`` finds one (no packet is sent), else ``host``.
    """
    if host not in WILDCARDS:
        return host
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    try:
        found = socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)
    except OSError:
        return host
    for *_, sockaddr in found:
        address = str(sockaddr[0])
        if not ipaddress.ip_address(address.partition("%")[0]).is_loopback:
            return address
    return host


def check_listen(name: str, host: object, port: object, stop_timeout: object) -> None:
    """Check a listening server's address and its own stop timeout.

    Raises:
        ConfigError: ``server '<name>': <option>=<value>: <why>``.

    """
    where = f"server {name!r}"
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}: host={host!r}: must be a host name or address")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port={port!r}: must be an integer from 0 to 65535")
    if stop_timeout is not None:
        check_seconds({f"{where}: stop_timeout": stop_timeout})


class ListeningServer(BaseServer):
    """A :class:`~quiesce.BaseServer` that listens on ``host:port``.

    ``port=0`` picks a free port; the adapter writes the real one back to
    :attr:`port` once bound, and :meth:`endpoints` reports it.
    """

    #: The scheme of :meth:`endpoints` (``http``, ``grpc``, ``tcp``).
    scheme = "tcp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        name: str,
        depends_on: Sequence[str] = (),
        stop_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.depends_on: Sequence[str] = tuple(depends_on)
        self.stop_timeout = stop_timeout

    @property
    def where(self) -> str:
        """How messages name this server: ``server 'http'``."""
        return f"server {self.name!r}"

    @property
    def address(self) -> str:
        """``host:port`` (``[::1]:port`` for IPv6), with the real port once bound."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def check(self) -> None:
        """Check the address and the stop timeout.

        Raises:
            ConfigError: ``server '<name>': <option>=<value>: <why>``.

        """
        check_listen(self.name, self.host, self.port, self.stop_timeout)

    def endpoints(self) -> list[str]:
        """``<scheme>://host:port``, with the real port once bound.

        A wildcard host (``0.0.0.0``, ``::``) is given as this machine's address
        (:func:`advertised_host`): clients cannot connect to the wildcard.
        """
        host = advertised_host(self.host)
        shown = f"[{host}]" if ":" in host else host
        return [f"{self.scheme}://{shown}:{self.port}"]

    def cannot_listen(self, cause: OSError | str) -> StartError:
        """The start error for an address that cannot be bound (``cause``: why)."""
        if isinstance(cause, OSError):  # asyncio rewrites strerror: say the system's reason
            cause = os.strerror(cause.errno) if cause.errno else str(cause)
        return StartError(self.where, f"cannot listen on {self.address}: {cause}")
