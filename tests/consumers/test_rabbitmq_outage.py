"""RabbitMQConsumer when the broker goes away or stops answering (through a Relay, in-process).

The shared broker is never stopped here: a :class:`Relay` between the
consumer and the broker drops or freezes the connection instead. The
broker-process restart is in test_rabbitmq_signals.py, on a private node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from consumers.polling import wait_until
from consumers.rabbitmq_proxy import Relay
from consumers.rabbitmq_support import Amqp, eventually
from quiesce.consumers import Message
from quiesce.consumers.rabbitmq import RabbitMQConsumer
from services import Names

#: What the App adds to a server's stop timeout as its hard bound on ``stop()``.
APP_MARGIN = 0.25


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[Amqp]:
    async with Amqp(amqp_url) as client:
        yield client


@pytest.fixture
async def relay(amqp_url: str) -> AsyncIterator[Relay]:
    relay = Relay(amqp_url)
    await relay.start()
    yield relay
    relay.thaw()
    await relay.close()


async def test_a_lost_connection_is_reconnected_and_what_was_in_flight_is_delivered_again(
    amqp: Amqp, amqp_queue: Names, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await amqp.declare(amqp_queue("lost"))
    ids = [f"m{i}" for i in range(20)]
    await amqp.publish(queue, ids)
    gate = asyncio.Event()
    handled: list[tuple[str, int]] = []

    async def handle(message: Message[bytes]) -> None:
        await gate.wait()
        handled.append((message.id, message.delivery_count))

    consumer = RabbitMQConsumer(
        handle, url=relay.url, queue=queue, concurrency=4, reconnect_max=0.2
    )
    with caplog.at_level(logging.INFO, "quiesce.lifecycle"):
        await consumer.start()
        await wait_until(lambda: consumer.in_flight == 4)
        await relay.sever()
        await wait_until(lambda: not consumer.connected)
        gate.set()  # the 4 return now: their channel is dead, so they are not acked
        await wait_until(lambda: consumer.acked == 20)
        await consumer.stop(5.0)
    assert f"consumer rabbitmq lost {relay.url.replace(':guest@', ':***@')}" in caplog.text
    assert "reconnecting in" in caplog.text
    assert "consumer rabbitmq reconnected" in caplog.text
    assert relay.accepted >= 2
    account = consumer.account()
    assert account["unacked"] == 4
    assert account["fetched"] == 24
    first_four = {i for i, _ in handled[:4]}
    # Delivered again on the new channel, and said so (a classic queue: redelivered, count 2).
    assert {(i, n) for i, n in handled[4:] if i in first_four} == {(i, 2) for i in first_four}
    assert sorted({i for i, _ in handled}) == sorted(ids)
    assert await amqp.ready(queue) == 0


async def test_a_failure_on_a_dead_channel_publishes_no_copy_the_original_comes_back(
    amqp: Amqp, amqp_queue: Names, relay: Relay
) -> None:
    queue = await amqp.declare(amqp_queue("dead-retry"))
    await amqp.publish(queue, ["x"])
    gate = asyncio.Event()
    counts: list[int] = []

    async def handle(message: Message[bytes]) -> None:
        counts.append(message.delivery_count)
        if len(counts) == 1:
            await gate.wait()
            raise RuntimeError("fails after its channel died")

    consumer = RabbitMQConsumer(handle, url=relay.url, queue=queue, reconnect_max=0.2)
    await consumer.start()
    await wait_until(lambda: consumer.in_flight == 1)
    await relay.sever()
    await wait_until(lambda: not consumer.connected)
    gate.set()
    await wait_until(lambda: consumer.acked == 1)
    await consumer.stop(5.0)
    assert counts == [1, 2]  # the original, redelivered: no copy besides it
    assert (consumer.failed, consumer.retried) == (1, 0)
    assert await amqp.ready(queue) == 0


async def test_a_broker_that_stops_answering_does_not_hold_the_stop(
    amqp: Amqp, amqp_queue: Names, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await amqp.declare(amqp_queue("frozen"))
    await amqp.publish(queue, [f"m{i}" for i in range(10)])
    gate = asyncio.Event()

    async def handle(message: Message[bytes]) -> None:
        await gate.wait()

    consumer = RabbitMQConsumer(handle, url=relay.url, queue=queue, concurrency=4)
    await consumer.start()
    await wait_until(lambda: consumer.in_flight == 4)
    relay.freeze()
    gate.set()
    with caplog.at_level(logging.WARNING, "quiesce.lifecycle"):
        began = time.monotonic()
        cut = await consumer.stop(1.0)
        took = time.monotonic() - began
    assert took < 1.0 + APP_MARGIN
    assert cut == []  # the handlers returned; their acks may not have reached the broker
    assert "basic.cancel on" in caplog.text
    assert consumer.acked + consumer.unacked == 4
    # Once the relay passes the close on, the broker has all 10 again (none was acked).
    relay.thaw()
    await relay.close()
    await eventually(lambda: _ready_is(amqp, queue, 10))


async def _ready_is(amqp: Amqp, queue: str, count: int) -> bool:
    return await amqp.ready(queue) == count


async def nothing(message: Message[bytes]) -> None:
    pass


async def test_a_stop_while_the_broker_is_away_ends_at_once(
    amqp: Amqp, amqp_queue: Names, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await amqp.declare(amqp_queue("away"))
    consumer = RabbitMQConsumer(nothing, url=relay.url, queue=queue, reconnect_max=0.2)
    with caplog.at_level(logging.INFO, "quiesce.lifecycle"):
        await consumer.start()
        await relay.close()  # refuses new connections too
        await wait_until(lambda: "(attempt 3)" in caplog.text)
    assert "Connect call failed" in caplog.text or "refused" in caplog.text.lower()
    began = time.monotonic()
    assert await consumer.stop(2.0) == []
    assert time.monotonic() - began < 0.25


async def test_a_deleted_queue_cancels_the_consumer_and_a_reconnect_declares_it_again(
    amqp: Amqp, amqp_queue: Names, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await amqp.declare(amqp_queue("deleted"))
    handled: list[str] = []

    async def handle(message: Message[bytes]) -> None:
        handled.append(message.id)

    consumer = RabbitMQConsumer(handle, url=amqp_url, queue=queue, reconnect_max=0.2)
    with caplog.at_level(logging.INFO, "quiesce.lifecycle"):
        await consumer.start()
        await amqp.channel.queue_delete(queue)
        await wait_until(lambda: "reconnected" in caplog.text)
        await amqp.publish(queue, ["after"])
        await wait_until(lambda: handled == ["after"])
        await consumer.stop(5.0)
    assert "the broker cancelled the consumer" in caplog.text
