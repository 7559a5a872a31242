"""RabbitMQConsumer against the real broker: its defaults, its options, and its stop.

Each test has queues of its own (``amqp_queue``), deleted after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractIncomingMessage

from consumers.polling import wait_until
from consumers.rabbitmq_support import Amqp, eventually
from quiesce.consumers import Message
from quiesce.consumers.rabbitmq import RabbitMQConsumer
from quiesce.errors import ConfigError, StartError
from services import Names


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[Amqp]:
    async with Amqp(amqp_url) as client:
        yield client


async def nothing(message: Message[bytes]) -> None:
    pass


def ids(n: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


async def test_the_defaults_prefetch_16_and_name_the_broker_without_its_password(
    amqp: Amqp, amqp_queue: Names, amqp_url: str
) -> None:
    queue = await amqp.declare(amqp_queue("defaults"))
    await amqp.publish(queue, ids(40))
    seen: list[Message[bytes]] = []
    gate = asyncio.Event()

    async def handle(message: Message[bytes]) -> None:
        seen.append(message)
        await gate.wait()

    consumer = RabbitMQConsumer(handle, url=amqp_url, queue=queue)
    assert (consumer.name, consumer.broker, consumer.concurrency) == ("rabbitmq", "rabbitmq", 16)
    assert (consumer.max_deliveries, consumer.dead_letter, consumer.declare) == (5, None, True)
    assert consumer.stop_timeout is None
    assert (consumer.connect_timeout, consumer.call_timeout) == (10.0, 5.0)
    assert consumer._where() == amqp_url.replace(":guest@", ":***@")
    consumer.check()
    await consumer.start()
    try:
        await wait_until(lambda: len(seen) == 16)
        # prefetch_count = concurrency: the broker sent 16, the other 24 still wait.
        assert await amqp.ready(queue) == 24
        first = seen[0]
        assert (first.id, first.body, first.broker, first.delivery_count) == (
            "m0",
            b"m0",
            "rabbitmq",
            1,
        )
        assert isinstance(first.raw, AbstractIncomingMessage)
        assert not first.raw.redelivered
    finally:
        gate.set()
        assert await consumer.stop(5.0) == []
    assert consumer.account()["acked"] == 16


async def test_a_message_without_a_message_id_is_named_by_its_delivery_tag(
    amqp: Amqp, amqp_queue: Names, amqp_url: str
) -> None:
    queue = await amqp.declare(amqp_queue("tag"))
    await amqp.publish_without_id(queue, b"anonymous")
    seen: list[Message[bytes]] = []

    async def handle(message: Message[bytes]) -> None:
        seen.append(message)

    consumer = RabbitMQConsumer(handle, url=amqp_url, queue=queue)
    await consumer.start()
    await wait_until(lambda: consumer.acked == 1)
    await consumer.stop(5.0)
    assert seen[0].id == str(seen[0].raw.delivery_tag) == "1"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"url": "redis://127.0.0.1:6379"}, "url='redis://127.0.0.1:6379'"),
        ({"url": "127.0.0.1:5672"}, "url="),
        ({"queue": ""}, "queue=''"),
        ({"dead_letter": "orders"}, "dead_letter='orders' is the queue itself"),
        ({"concurrency": 0}, "concurrency=0"),
    ],
)
def test_bad_options_are_a_config_error_naming_the_option(
    options: dict[str, object], named: str
) -> None:
    kwargs: dict[str, object] = {"url": "amqp://guest:guest@127.0.0.1:5672/", "queue": "orders"}
    kwargs.update(options)
    consumer = RabbitMQConsumer(nothing, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="consumer 'rabbitmq': ") as error:
        consumer.check()
    assert named in str(error.value)


def test_a_bad_url_error_does_not_show_its_password() -> None:
    consumer = RabbitMQConsumer(nothing, url="http://user:s3cret@host/", queue="q")
    with pytest.raises(ConfigError) as error:
        consumer.check()
    assert "s3cret" not in str(error.value)


async def test_declare_makes_a_durable_queue_and_declare_false_fails_the_start_on_a_missing_one(
    amqp: Amqp, amqp_queue: Names, amqp_url: str
) -> None:
    missing = amqp_queue("missing")
    consumer = RabbitMQConsumer(nothing, url=amqp_url, queue=missing, declare=False)
    with pytest.raises(StartError, match=f"NOT_FOUND.*{missing}"):
        await consumer.start()
    assert not consumer.connected

    made = amqp_queue("made")
    consumer = RabbitMQConsumer(nothing, url=amqp_url, queue=made)
    await consumer.start()
    await consumer.stop(5.0)
    assert await amqp.is_durable(made)


async def test_an_existing_quorum_queue_is_consumed_as_it_is(
    amqp: Amqp, amqp_queue: Names, amqp_url: str
) -> None:
    # Declaring it again without its x-queue-type would be PRECONDITION_FAILED.
    queue = await amqp.declare(amqp_queue("quorum"), {"x-queue-type": "quorum"})
    await amqp.publish(queue, ids(3))
    consumer = RabbitMQConsumer(nothing, url=amqp_url, queue=queue)
    await consumer.start()
    await wait_until(lambda: consumer.acked == 3)
    await consumer.stop(5.0)


async def test_the_stop_cancels_first_hands_back_what_waits_and_acks_only_what_returned(
    amqp: Amqp, amqp_queue: Names, amqp_url: str
) -> None:
    queue = await amqp.declare(amqp_queue("stop"))
    await amqp.publish(queue, ids(20))
    gates = {i: asyncio.Event() for i in ids(4)}
    started: list[str] = []

    async def handle(message: Message[bytes]) -> None:
        started.append(message.id)
        await gates[message.id].wait()  # a KeyError if any other message starts

    consumer = RabbitMQConsumer(handle, url=amqp_url, queue=queue, concurrency=4)
    await consumer.start()
    await wait_until(lambda: len(started) == 4)
    assert await amqp.ready(queue) == 16
    # m0 and m1 return as the stop begins: their acks free two prefetch slots, and the
    # broker sends m4 and m5 before its cancel-ok. Nobody starts them: they go back at once.
    gates["m0"].set()
    gates["m1"].set()
    stop = asyncio.create_task(consumer.stop(10.0))
    await wait_until(lambda: consumer.requeued == 2)
    await eventually(lambda: _ready_is(amqp, queue, 16))
    assert not stop.done()  # m2 and m3 still run: they were not cut nor handed back
    assert consumer.acked == 2
    gates["m2"].set()
    gates["m3"].set()
    assert await stop == []
    assert started == ids(4)
    account = consumer.account()
    assert account["fetched"] == account["acked"] == 4
    assert (account["requeued_not_started"], account["unacked"]) == (2, 0)
    assert account["requeued_cut"] == []
    left = await amqp.take(queue)
    assert sorted(m.message_id or "" for m in left) == sorted(ids(20)[4:])
    assert {m.message_id for m in left if m.redelivered} == {"m4", "m5"}


async def _ready_is(amqp: Amqp, queue: str, count: int) -> bool:
    return await amqp.ready(queue) == count


async def test_a_handler_past_the_stop_timeout_is_cut_named_and_its_message_comes_back(
    amqp: Amqp, amqp_queue: Names, amqp_url: str
) -> None:
    queue = await amqp.declare(amqp_queue("cut"))
    await amqp.publish(queue, ["hang", "quick"])
    forever = asyncio.Event()

    async def handle(message: Message[bytes]) -> None:
        if message.id == "hang":
            await forever.wait()

    consumer = RabbitMQConsumer(handle, url=amqp_url, queue=queue)
    await consumer.start()
    await wait_until(lambda: consumer.acked == 1 and consumer.in_flight == 1)
    began = time.monotonic()
    cut = await consumer.stop(0.3)
    took = time.monotonic() - began
    assert 0.3 <= took < 0.3 + 0.25
    assert cut == ["message hang [handler cut at 0.3s, handed back]"]
    assert consumer.account()["requeued_cut"] == ["hang"]
    assert consumer.account()["acked"] == 1
    seen: list[Message[bytes]] = []

    async def record(message: Message[bytes]) -> None:
        seen.append(message)

    again = RabbitMQConsumer(record, url=amqp_url, queue=queue)
    await again.start()
    await wait_until(lambda: again.acked == 1)
    await again.stop(5.0)
    assert [(m.id, m.delivery_count, m.raw.redelivered) for m in seen] == [("hang", 2, True)]
