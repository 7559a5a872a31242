"""A loopback TCP relay in front of the real RabbitMQ, to make it stop answering or drop clients.

The shared broker serves other tests at the same time, so these tests never
stop it: a consumer connects through a :class:`Relay` instead, which can
``freeze()`` (keep the connections open, relay nothing: a broker that does not
answer) or ``sever()`` (close every connection: the broker went away).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class Relay:
    """Relay a loopback port to the broker at ``upstream`` (an AMQP URL); ``url`` is through it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.target = (self.upstream.hostname or "127.0.0.1", self.upstream.port or 5672)
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        """The upstream URL with the relay's port."""
        netloc = self.upstream.netloc.rsplit("@", 1)
        userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
        return self.upstream._replace(netloc=f"{userinfo}127.0.0.1:{self.port}").geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        """Relay nothing more either way; the connections stay open."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def sever(self) -> None:
        """Close every relayed connection (new ones are still accepted)."""
        for writer in list(self._writers):
            writer.transport.abort()
        await self._join()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.sever()
        if self._server is not None:
            await self._server.wait_closed()

    async def _join(self) -> None:
        for pipe in list(self._pipes):
            pipe.cancel()
        if self._pipes:
            await asyncio.wait(set(self._pipes), timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink, (writer, up_writer)))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        ends: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for end in ends:
                self._writers.discard(end)
                with contextlib.suppress(RuntimeError):
                    end.transport.abort()
