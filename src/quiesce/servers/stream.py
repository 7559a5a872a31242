"""A plain asyncio TCP server (``asyncio.start_server``) as a :class:`~quiesce.Server`.

For raw TCP services, and the smallest complete example of the protocol:
ready means listening, stop closes the listener, lets connection handlers
finish within the timeout, then cancels them and closes their transports.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from quiesce.errors import ConfigError
from quiesce.servers.listening import ListeningServer

__all__ = ["StreamHandler", "StreamServer"]

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class StreamServer(ListeningServer):
    """Serve ``handler(reader, writer)`` for each TCP connection on ``host:port``.

    ``port=0`` picks a free port; :meth:`endpoints` reports the real one.
    ``draining`` is true from :meth:`drain` on, for handlers that want to
    close keep-alive style connections early. Each new connection is an
    arrival for the app's adaptive drain.
    """

    def __init__(
        self,
        handler: StreamHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "tcp",
        depends_on: Sequence[str] = (),
        stop_timeout: float | None = None,
    ) -> None:
        super().__init__(
            host=host, port=port, name=name, depends_on=depends_on, stop_timeout=stop_timeout
        )
        self.handler = handler
        self.draining = False
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def check(self) -> None:
        """Check the options before the app starts anything.

        Raises:
            ConfigError: the handler is not callable, or a bad address or stop timeout.

        """
        super().check()
        if not callable(self.handler):
            raise ConfigError(f"{self.where}: the handler {self.handler!r} is not callable")

    async def start(self) -> None:
        """Bind and listen.

        Raises:
            StartError: the address cannot be bound.

        """
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise self.cannot_listen(exc) from exc
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        if self.lifecycle is not None:
            self.lifecycle.arrived()
        try:
            await self.handler(reader, writer)
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def drain(self) -> None:
        """Mark the server draining; it keeps accepting until :meth:`stop`."""
        self.draining = True

    async def stop(self, timeout: float) -> list[str]:
        """Close the listener, wait for handlers up to ``timeout``, then cancel them.

        Returns the peers whose handlers had to be cancelled.
        """
        if self._server is None:
            return []
        server, self._server = self._server, None
        server.close()
        cut: list[str] = []
        pending = set(self._connections)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            writer = self._connections.get(task)
            peer = writer.get_extra_info("peername") if writer is not None else None
            cut.append(f"connection from {peer[0]}:{peer[1]}" if peer else "connection")
            task.cancel()
            if writer is not None:
                writer.transport.abort()
        if pending:
            await asyncio.wait(pending, timeout=0.1)
        # Every transport is closed by now, so wait_closed() (which on 3.12+ waits
        # for open connections) returns promptly; still, never wait on it unbounded.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await server.wait_closed()
        return cut
