"""RabbitMQConsumer's retries, delivery counts and dead letters, against the real broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from consumers.polling import wait_until
from consumers.rabbitmq_support import Amqp
from quiesce.consumers import Message
from quiesce.consumers.rabbitmq import RabbitMQConsumer
from quiesce.consumers.rabbitmq_copies import delivery_count
from services import Names


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[Amqp]:
    async with Amqp(amqp_url) as client:
        yield client


class Poison(Exception):
    pass


async def test_a_retry_counts_each_failure_exactly_on_a_classic_queue_and_keeps_the_message(
    amqp: Amqp, amqp_queue: Names, amqp_url: str
) -> None:
    queue = await amqp.declare(amqp_queue("retry"))
    await amqp.publish(
        queue,
        ["flaky"],
        headers={"tenant": "acme"},
        content_type="application/json",
        correlation_id="c-1",
        priority=3,
    )
    seen: list[Message[bytes]] = []

    async def handle(message: Message[bytes]) -> None:
        seen.append(message)
        if len(seen) < 3:
            raise Poison(f"attempt {len(seen)}")

    consumer = RabbitMQConsumer(handle, url=amqp_url, queue=queue)
    await consumer.start()
    await wait_until(lambda: consumer.acked == 1)
    await consumer.stop(5.0)
    assert [m.delivery_count for m in seen] == [1, 2, 3]
    assert [m.headers.get("x-quiesce-deliveries") for m in seen] == [None, 1, 2]
    for message in seen:
        raw = message.raw
        assert (message.id, message.body, message.headers["tenant"]) == ("flaky", b"flaky", "acme")
        assert (raw.content_type, raw.correlation_id, raw.priority) == (
            "application/json",
            "c-1",
            3,
        )
        assert raw.delivery_mode == 2
    account = consumer.account()
    assert (account["failed"], account["retried"], account["acked"]) == (2, 2, 1)
    assert await amqp.ready(queue) == 0


async def test_a_poison_message_is_dead_lettered_with_why_and_the_others_go_on(
    amqp: Amqp, amqp_queue: Names, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await amqp.declare(amqp_queue("poison"))
    dead = amqp_queue("poison-dead")
    ids = [f"m{i}" for i in range(10)]
    await amqp.publish(queue, ["bad", *ids], headers={"tenant": "acme"})
    handled: list[str] = []
    deliveries: list[int] = []

    async def handle(message: Message[bytes]) -> None:
        if message.id == "bad":
            deliveries.append(message.delivery_count)
            raise Poison("cannot parse")
        handled.append(message.id)

    consumer = RabbitMQConsumer(
        handle, url=amqp_url, queue=queue, max_deliveries=3, dead_letter=dead, concurrency=4
    )
    with caplog.at_level(logging.WARNING, "quiesce.lifecycle"):
        await consumer.start()
        await wait_until(lambda: consumer.dead_lettered == 1 and consumer.acked == 10)
        await consumer.stop(5.0)
    assert deliveries == [1, 2, 3]
    assert sorted(handled) == sorted(ids)
    assert f"message bad dead-lettered to {dead} after 3 deliveries: Poison: cannot parse" in (
        caplog.text
    )
    account = consumer.account()
    assert (account["failed"], account["retried"], account["dead_lettered"]) == (3, 2, 1)
    assert await amqp.ready(queue) == 0
    assert await amqp.is_durable(dead)
    (letter,) = await amqp.take(dead)
    assert (letter.message_id, letter.body) == ("bad", b"bad")
    assert letter.headers == {
        "tenant": "acme",
        "x-quiesce-deliveries": 3,
        "x-quiesce-error": "Poison: cannot parse",
        "x-quiesce-queue": queue,
    }


async def test_without_a_dead_letter_queue_a_poison_message_is_dropped_with_an_error_line(
    amqp: Amqp, amqp_queue: Names, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await amqp.declare(amqp_queue("drop"))
    await amqp.publish(queue, ["bad"])

    async def handle(message: Message[bytes]) -> None:
        raise Poison("no")

    consumer = RabbitMQConsumer(handle, url=amqp_url, queue=queue, max_deliveries=2)
    with caplog.at_level(logging.ERROR, "quiesce.lifecycle"):
        await consumer.start()
        await wait_until(lambda: consumer.dropped == 1)
        await consumer.stop(5.0)
    assert "message bad dropped (no dead_letter set) after 2 deliveries: Poison: no" in caplog.text
    assert await amqp.ready(queue) == 0


async def test_a_quorum_queue_counts_a_hand_back_too(
    amqp: Amqp, amqp_queue: Names, amqp_url: str
) -> None:
    queue = await amqp.declare(amqp_queue("quorum"), {"x-queue-type": "quorum"})
    await amqp.publish(queue, ["q"])
    counts: list[int] = []
    forever = asyncio.Event()

    async def hang(message: Message[bytes]) -> None:
        counts.append(message.delivery_count)
        await forever.wait()

    first = RabbitMQConsumer(hang, url=amqp_url, queue=queue)
    await first.start()
    await wait_until(lambda: first.in_flight == 1)
    assert await first.stop(0.1)  # cut and handed back: the broker counts that delivery

    async def fail_once(message: Message[bytes]) -> None:
        counts.append(message.delivery_count)
        if len(counts) == 2:
            raise Poison("once")

    second = RabbitMQConsumer(fail_once, url=amqp_url, queue=queue)
    await second.start()
    await wait_until(lambda: second.acked == 1)
    await second.stop(5.0)
    # 1; 2 (x-delivery-count 1); 3 (a copy: 2 earlier deliveries, its own first).
    assert counts == [1, 2, 3]


@pytest.mark.parametrize(
    ("headers", "redelivered", "count"),
    [
        ({}, False, 1),
        ({}, True, 2),
        ({"x-delivery-count": 4}, True, 5),
        ({"x-quiesce-deliveries": 3}, False, 4),
        ({"x-quiesce-deliveries": 3, "x-delivery-count": 1}, True, 5),
        ({"x-quiesce-deliveries": "junk"}, True, 2),
        ({"x-quiesce-deliveries": -7}, False, 1),
        ({"x-quiesce-deliveries": True}, False, 1),
    ],
)
def test_the_delivery_count_from_the_headers(
    headers: dict[str, object], redelivered: bool, count: int
) -> None:
    assert delivery_count(headers, redelivered) == count


async def test_a_dead_letter_that_cannot_be_routed_is_not_acked_away(
    amqp: Amqp, amqp_queue: Names, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await amqp.declare(amqp_queue("unrouted"))
    dead = amqp_queue("unrouted-dead")
    attempts: list[int] = []

    async def handle(message: Message[bytes]) -> None:
        attempts.append(message.delivery_count)
        raise Poison("always")

    consumer = RabbitMQConsumer(
        handle, url=amqp_url, queue=queue, max_deliveries=1, dead_letter=dead
    )
    with caplog.at_level(logging.WARNING, "quiesce.lifecycle"):
        await consumer.start()
        await amqp.channel.queue_delete(dead)  # someone deletes it while the consumer runs
        await amqp.publish(queue, ["bad"])
        # The copy comes back unroutable (mandatory): the original is not acked, but put back.
        await wait_until(lambda: len(attempts) >= 3)
        await amqp.declare(dead)
        await wait_until(lambda: consumer.dead_lettered == 1)
        await consumer.stop(5.0)
    assert "dead-letter of message bad failed" in caplog.text
    assert [m.message_id for m in await amqp.take(dead)] == ["bad"]
    assert await amqp.ready(queue) == 0
