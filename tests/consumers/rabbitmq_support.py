"""What the RabbitMQ consumer tests share: a client of the test broker, and bounded waits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.base import Frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from consumers.polling import wait_until

#: Bound on each call of the test's own client.
CALL = 10.0


class Amqp:
    """The test's own connection to the broker: publish, count and take what a queue holds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> Self:
        self._connection = await aio_pika.connect(self.url, timeout=CALL)
        self._channel = await self._connection.channel()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None
        return self._channel

    async def declare(self, queue: str, arguments: Mapping[str, Any] | None = None) -> str:
        await self.channel.declare_queue(
            queue, durable=True, arguments=dict(arguments or {}) or None, timeout=CALL
        )
        return queue

    async def publish(
        self,
        queue: str,
        ids: Iterable[str],
        *,
        headers: Mapping[str, Any] | None = None,
        **props: Any,
    ) -> None:
        """One persistent message per id (its ``message_id`` and body), confirmed by the broker."""
        for i in ids:
            message = aio_pika.Message(
                i.encode(),
                message_id=i,
                headers=dict(headers or {}),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                **props,
            )
            await self.channel.default_exchange.publish(message, queue, timeout=CALL)

    async def publish_many(self, queue: str, ids: Sequence[str], *, batch: int = 500) -> None:
        """:meth:`publish` ``batch`` at a time (their confirms awaited together)."""
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            await asyncio.gather(*(self.publish(queue, [i]) for i in chunk))

    async def publish_without_id(self, queue: str, body: bytes) -> None:
        """Publish a message with no ``message_id`` (aiormq's publish makes one up: not this)."""
        assert self._connection is not None
        async with self._connection.channel(publisher_confirms=False) as channel:
            underlay = await channel.get_underlay_channel()
            assert isinstance(underlay, aiormq.Channel)
            header = ContentHeader(properties=spec.Basic.Properties(), body_size=len(body))
            frames: list[Frame | ContentHeader | ContentBody] = [
                spec.Basic.Publish(routing_key=queue),
                header,
                ContentBody(body),
            ]
            await underlay.write_queue.put(ChannelFrame.marshall(underlay.number, frames))

    async def ready(self, queue: str) -> int:
        """How many messages wait in ``queue`` (delivered and unacked ones are not counted)."""
        declared = await self.channel.declare_queue(queue, passive=True, timeout=CALL)
        count = declared.declaration_result.message_count
        assert count is not None
        return count

    async def take(self, queue: str) -> list[AbstractIncomingMessage]:
        """Everything ``queue`` holds now, removed from it."""
        q = await self.channel.get_queue(queue, ensure=False)
        taken = []
        while (message := await q.get(no_ack=True, fail=False, timeout=CALL)) is not None:
            taken.append(message)
        return taken

    async def is_durable(self, queue: str) -> bool:
        """Whether ``queue`` is durable: redeclaring it durable on a channel of its own succeeds."""
        assert self._connection is not None
        channel = await self._connection.channel()
        try:
            await channel.declare_queue(queue, durable=True, timeout=CALL)
        except aio_pika.exceptions.ChannelPreconditionFailed:
            return False
        finally:
            if not channel.is_closed:
                await channel.close()
        return True


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Return once ``await check()`` holds (it asks the broker); fail after ``timeout``."""
    await wait_until(check, timeout, period=0.02)
