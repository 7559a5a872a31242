"""What every server on ``host:port`` shares: its options, their checks, its address, its errors.

The HTTP, gRPC and TCP adapters subclass :class:`ListeningServer`; so will
every later kind that listens. A busy port fails each of them the same way:
``server 'http' failed to start: cannot listen on 127.0.0.1:8000: Address
already in use``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from quiesce.config import check_seconds
from quiesce.errors import ConfigError, StartError
from quiesce.servers.contract import BaseServer

__all__ = ["ListeningServer", "check_listen"]


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
        """``<scheme>://host:port``, with the real port once bound."""
        return [f"{self.scheme}://{self.address}"]

    def cannot_listen(self, cause: OSError | str) -> StartError:
        """The start error for an address that cannot be bound (``cause``: why)."""
        if isinstance(cause, OSError):  # asyncio rewrites strerror: say the system's reason
            cause = os.strerror(cause.errno) if cause.errno else str(cause)
        return StartError(self.where, f"cannot listen on {self.address}: {cause}")
