"""A :class:`~quiesce.consumers.Consumer` of a RabbitMQ queue, on aio-pika (``quiesce[rabbitmq]``).

Manual acks, ``prefetch_count = concurrency``: the broker sends at most as
many messages as there are handlers, and the deliveries wait in a local
buffer until a handler is free. At the stop the consumer sends
``basic.cancel`` first; what was delivered but not started (the buffer, and
whatever arrives until ``cancel-ok``) is nacked back to the queue, the
running handlers finish, then the channel and the connection close.

Reconnects are the base's (jittered backoff, logged), not aio-pika's robust
connection: two reconnect loops on one connection fight, and a robust channel
restores itself with new delivery tags behind the consumer's back. Each
connect opens a new connection and channel; a message delivered on a channel
that died is not acked (the broker delivers it again), only counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from quiesce.consumers.consumer import Consumer
from quiesce.consumers.message import Handler, Message
from quiesce.consumers.rabbitmq_copies import (
    DELIVERIES,
    ERROR,
    ERROR_MAX,
    QUEUE,
    copy_of,
    delivery_count,
    headers_of,
)
from quiesce.errors import ConfigError, describe
from quiesce.registry import redact

__all__ = ["RabbitMQConsumer"]

logger = logging.getLogger("quiesce.lifecycle")

#: An idle fetch looks at the channel again after this long, and returns nothing.
FETCH_WAIT = 1.0


class RabbitMQConsumer(Consumer[bytes]):
    """Consume ``queue`` on the RabbitMQ at ``url``, ``concurrency`` messages at a time.

    A message's ``id`` is its AMQP ``message_id`` (its delivery tag when the
    publisher set none), its ``body`` the bytes, its ``raw`` the aio-pika
    ``IncomingMessage``. ``delivery_count`` is exact for handler failures on any
    queue (a retry publishes a copy with an ``x-quiesce-deliveries`` header, then
    acks the original); a redelivery for another reason (handed back at a stop,
    a lost connection) counts exactly on a quorum queue, at most once per copy on
    a classic one.

    Args:
        handle: ``async def handle(message) -> None``.
        url: ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS; aiormq's
            query options such as ``?heartbeat=10`` apply).
        queue: the queue to consume.
        concurrency: handlers at once, and the channel's ``prefetch_count``.
        name: the server name (logs, the report).
        max_deliveries: deliveries before a failing message is dead-lettered.
        dead_letter: a queue (declared durable at the start) that dead-lettered
            messages are published to, with the original headers plus
            ``x-quiesce-error``, ``x-quiesce-deliveries`` and ``x-quiesce-queue``;
            None acks them away with an ERROR log line naming each.
        declare: declare ``queue`` (durable, with ``queue_arguments``) when missing;
            False only checks that it exists (a missing queue fails the start).
        queue_arguments: the arguments to declare it with, e.g.
            ``{"x-queue-type": "quorum"}``.
        stop_timeout, connect_timeout, call_timeout, reconnect_max, depends_on:
            as :class:`~quiesce.consumers.Consumer` has them.

    """

    broker = "rabbitmq"
    ack_never_waits = True  # basic_ack(wait=False) queues the frame for the writer

    def __init__(
        self,
        handle: Handler[bytes],
        *,
        url: str,
        queue: str,
        concurrency: int = 16,
        name: str = "rabbitmq",
        max_deliveries: int = 5,
        dead_letter: str | None = None,
        declare: bool = True,
        queue_arguments: Mapping[str, Any] | None = None,
        stop_timeout: float | None = None,
        connect_timeout: float = 10.0,
        call_timeout: float = 5.0,
        reconnect_max: float = 10.0,
        depends_on: Sequence[str] = (),
    ) -> None:
        super().__init__(
            handle,
            name=name,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            dead_letter=dead_letter,
            stop_timeout=stop_timeout,
            connect_timeout=connect_timeout,
            call_timeout=call_timeout,
            reconnect_max=reconnect_max,
            depends_on=depends_on,
        )
        self.url = url
        self.queue = queue
        self.declare = declare
        self.queue_arguments = dict(queue_arguments or {})
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._underlay: aiormq.Channel | None = None
        self._tag: str | None = None
        self._buffer: collections.deque[Message[bytes]] = collections.deque()
        self._arrived = asyncio.Event()
        self._ticking: asyncio.TimerHandle | None = None
        self._lost: str | None = None
        self._cancelled = False  # cancel-ok came: a late delivery is nacked at once

    def check(self) -> None:
        """Check the options.

        Raises:
            ConfigError: as :meth:`Consumer.check`, or a ``url`` that is not
                ``amqp://``/``amqps://``, an empty ``queue``, a ``dead_letter`` that
                is the queue itself.

        """
        super().check()
        where = f"consumer {self.name!r}"
        url: object = self.url
        if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
            raise ConfigError(f"{where}: url={redact(str(url))!r} must be amqp:// or amqps://")
        queue: object = self.queue
        if not isinstance(queue, str) or not queue:
            raise ConfigError(f"{where}: queue={self.queue!r} must be a queue name")
        if self.dead_letter == self.queue:
            raise ConfigError(f"{where}: dead_letter={self.dead_letter!r} is the queue itself")

    def _where(self) -> str:
        return redact(self.url)

    # -- connecting ------------------------------------------------------------

    async def _connect(self) -> None:
        self._lost = None
        self._cancelled = False
        self._buffer.clear()
        try:
            await self._open()
        except Exception as exc:
            self._lost = describe(exc)  # what the next fetch reports
            raise

    async def _open(self) -> None:
        bound = self.call_timeout
        connection = await aio_pika.connect(
            self.url,
            timeout=self.connect_timeout,
            client_properties={"connection_name": f"quiesce {self.name}"},
        )
        self._connection = connection
        connection.close_callbacks.add(self._closed_by_broker)
        await self._ensure(connection, self.queue, self.queue_arguments, create=self.declare)
        if self.dead_letter:
            await self._ensure(connection, self.dead_letter, {}, create=True)
        # Confirms and mandatory returns: a retry's or a dead letter's copy is known to be
        # in its queue before the original is acked.
        channel = connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.initialize(timeout=bound)
        self._channel = channel
        channel.close_callbacks.add(self._closed_by_broker)
        underlay = self._underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        await channel.set_qos(prefetch_count=self.concurrency, timeout=bound)
        # aiormq's consumer itself: aio-pika's queue.consume() adds a task per delivery.
        consuming = await underlay.basic_consume(self.queue, self._deliver, timeout=bound)
        self._tag = consuming.consumer_tag
        self._tick()

    async def _ensure(
        self, connection: AbstractConnection, name: str, arguments: dict[str, Any], *, create: bool
    ) -> None:
        """Make sure the queue ``name`` exists; declare it (durable) only when it does not.

        An existing queue is taken as it is: declaring it again with other arguments
        (a quorum queue declared without ``x-queue-type``) is an error on RabbitMQ.
        Each try is on a channel of its own, since a failed declare closes its channel.
        """
        bound = self.call_timeout
        for passive in (True, False):
            async with connection.channel(publisher_confirms=False) as channel:
                try:
                    await channel.declare_queue(
                        name,
                        durable=True,
                        passive=passive,
                        arguments=None if passive else arguments or None,
                        timeout=bound,
                    )
                    return
                except aiormq.exceptions.ChannelNotFoundEntity:
                    if not create:
                        raise

    async def _closed_by_broker(self, sender: object, exc: BaseException | None = None) -> None:
        if sender is self._connection or sender is self._channel:
            self._lose(f"connection closed: {describe(exc) if exc else 'by the broker'}")

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        # Not ready from now on, even while every handler is busy and nothing fetches.
        self.connected = False
        self._arrived.set()

    def _live(self, raw: AbstractIncomingMessage) -> bool:
        """Whether ``raw`` came on the channel in use, still open: only then can it be settled."""
        try:
            return raw.channel is self._underlay and not raw.channel.is_closed
        except aiormq.exceptions.ChannelInvalidStateError:
            return False

    # -- fetching --------------------------------------------------------------

    async def _deliver(self, delivery: aiormq.abc.DeliveredMessage) -> None:
        if delivery.channel is not self._underlay:
            return  # its channel died (we are on another): the broker has put it back already
        raw = aio_pika.IncomingMessage(delivery, no_ack=False)
        headers = headers_of(raw)
        message = Message(
            raw.message_id or str(raw.delivery_tag),
            raw.body,
            headers,
            delivery_count(headers, raw.redelivered),
            self.broker,
            raw,
        )
        if not self._cancelled:
            self._buffer.append(message)
            self._arrived.set()
            return
        # It came after cancel-ok, once the stop took the buffer: nobody will start it.
        ok, _ = await self._bounded(self._hand_back([message]), "hand back a late delivery")
        self.requeued += ok

    async def _fetch(self, limit: int) -> Sequence[Message[bytes]]:
        self._check_alive()
        if not self._buffer:
            self._arrived.clear()
            await self._arrived.wait()  # a delivery, a loss, or the tick: FETCH_WAIT at most
            self._check_alive()
        buffer = self._buffer
        return [buffer.popleft() for _ in range(min(limit, len(buffer)))]

    def _tick(self) -> None:
        """Wake the fetch every FETCH_WAIT: one timer, not one per fetch, bounds its wait."""
        self._arrived.set()
        self._ticking = asyncio.get_running_loop().call_later(FETCH_WAIT, self._tick)

    def _check_alive(self) -> None:
        """Raise when the connection is gone, so that the base reconnects (and logs it)."""
        if self._lost is None and (self._underlay is None or self._underlay.is_closed):
            self._lost = "channel closed"
        if self._lost is None and not self._consuming():
            self._lost = "the broker cancelled the consumer (was the queue deleted?)"
        if self._lost is not None:
            raise ConnectionError(self._lost)

    def _consuming(self) -> bool:
        """Whether the channel still has the consumer: aiormq drops it at a broker's basic.cancel.

        (aiormq 6, under aio-pika 9, has no callback for that frame.)
        """
        return self._underlay is None or self._tag is None or self._tag in self._underlay.consumers

    async def _stop_fetching(self) -> Sequence[Message[bytes]]:
        underlay, tag = self._underlay, self._tag
        if underlay is not None and tag is not None and self._lost is None:
            # Deliveries until cancel-ok join the buffer; a cut cancel still returns it.
            bound = self.call_timeout
            if self._deadline is not None:
                bound = min(bound, self._deadline.remaining() / 2)
            try:
                await underlay.basic_cancel(tag, timeout=bound)
                self._cancelled = True
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                logger.warning(
                    "consumer %s: basic.cancel on %s failed (%s); handing back what it holds",
                    self.name,
                    self._where(),
                    describe(exc),
                )
        left = list(self._buffer)
        self._buffer.clear()
        return left

    # -- settling --------------------------------------------------------------

    async def _ack(self, message: Message[bytes]) -> bool:
        raw: AbstractIncomingMessage = message.raw
        if not self._live(raw) or raw.delivery_tag is None:
            return False
        if raw.processed:
            return True  # the handler settled it itself (a second ack would close the channel)
        try:
            # Queued for the connection's writer, not waited for: an ack has no answer, and
            # the channel's close (after the last ack) goes out behind it.
            await raw.channel.basic_ack(raw.delivery_tag, wait=False)
        except CONNECTION_EXCEPTIONS:
            return False
        return True

    async def _retry(self, message: Message[bytes]) -> None:
        headers = dict(message.headers)
        headers[DELIVERIES] = message.delivery_count
        await self._publish(message, headers, self.queue)
        if not await self._ack(message):
            self.unacked += 1  # the copy is in the queue, and the original comes back too
            logger.warning(
                "consumer %s: message %s was published again but its channel is gone: "
                "the broker will deliver it twice",
                self.name,
                message.id,
            )

    async def _dead_letter(self, message: Message[bytes], error: str) -> None:
        if self.dead_letter:
            headers = dict(message.headers)
            headers.update(
                {ERROR: error[:ERROR_MAX], DELIVERIES: message.delivery_count, QUEUE: self.queue}
            )
            await self._publish(message, headers, self.dead_letter)
        if not await self._ack(message):
            raise ConnectionError("its channel is gone: the broker will deliver it again")

    async def _publish(self, message: Message[bytes], headers: dict[str, Any], to: str) -> None:
        """Publish a copy of ``message`` to the queue ``to``, confirmed by the broker.

        Raises:
            ConnectionError: the message's channel is gone (the broker delivers the
                original again: no copy is made).
            Exception: what the publish raised; the original is nacked back, as its
                copy is not known to be in ``to``.

        """
        raw: AbstractIncomingMessage = message.raw
        channel = self._channel
        if channel is None or not self._live(raw):
            raise ConnectionError("its channel is gone: the broker will deliver it again")
        try:
            await channel.default_exchange.publish(
                copy_of(raw, headers), to, timeout=self.call_timeout
            )
        except Exception:
            # (Cut by the bound instead, the original stays unacked until its channel closes.)
            if self._live(raw):
                with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                    await raw.nack(requeue=True)
            raise

    async def _hand_back(self, messages: Sequence[Message[bytes]]) -> None:
        for message in messages:
            raw: AbstractIncomingMessage = message.raw
            if not self._live(raw):
                continue  # its channel died: the broker has put it back already
            try:
                await raw.nack(requeue=True)
            except CONNECTION_EXCEPTIONS:
                continue  # the connection died meanwhile: the broker puts it back

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        channel, self._channel = self._channel, None
        self._tag = self._underlay = None
        if self._ticking is not None:
            self._ticking.cancel()
        self._buffer.clear()
        if connection is None:
            return
        try:
            if channel is not None and not channel.is_closed:
                await channel.close()
        finally:
            # Closing the connection also closes the channel if that was cut; the broker
            # puts back every message left unacked on it.
            await connection.close()
