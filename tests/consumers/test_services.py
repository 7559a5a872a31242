"""The test services themselves: each fixture gives a working server, and private ones restart."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from pathlib import Path

import aio_pika
import aiormq
import asyncpg
import pytest
import redis.asyncio

import services
from conftest import free_ports
from rabbitmq_node import PrivateRabbitMQ, amqp_answers
from service_fixtures import delete_keys
from services import Names, PrivateRedis


async def test_redis_url_answers_ping(redis_client: redis.asyncio.Redis) -> None:
    assert await redis_client.ping()


async def test_redis_key_names_are_unique_and_their_keys_deleted(
    redis_client: redis.asyncio.Redis,
) -> None:
    names = Names()
    stream, other = names("orders"), services.unique("orders")
    assert stream != other
    assert stream.startswith("orders_")
    await redis_client.xadd(stream, {"id": "1"})
    await redis_client.xadd(f"{stream}:dead", {"id": "2"})
    await redis_client.set(other, "kept")
    try:
        await delete_keys(redis_client, names.made)
        assert await redis_client.exists(stream, f"{stream}:dead") == 0
        assert await redis_client.get(other) == b"kept"
    finally:
        await redis_client.delete(other)


async def test_amqp_url_declares_publishes_and_gets(amqp_url: str, amqp_queue: Names) -> None:
    name = amqp_queue("services")
    async with await aio_pika.connect(amqp_url, timeout=10) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), routing_key=name)
        message = await queue.get(timeout=5, fail=True)
        assert message is not None
        await message.ack()
        assert message.body == b"hello"


async def test_postgres_dsn_answers_a_query(postgres_dsn: str, pg_table: str) -> None:
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        assert await conn.fetchval("SELECT current_database()") == "test"
        await conn.execute(f"INSERT INTO {pg_table} (id) VALUES ('a')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(f"INSERT INTO {pg_table} (id) VALUES ('a')")
        assert await conn.fetchval(f"SELECT count(*) FROM {pg_table}") == 1
    finally:
        await conn.close()


def test_probes_tell_the_services_apart(private_redis: PrivateRedis) -> None:
    (closed,) = free_ports(1)
    assert services.redis_answers(private_redis.port)
    assert not amqp_answers(private_redis.port, timeout=0.3)  # Redis waits for a line end
    assert not services.redis_answers(closed)
    assert not amqp_answers(closed)


@pytest.mark.parametrize("down", ["stop", "kill"])
async def test_private_redis_keeps_a_stream_over_a_restart_on_its_port(
    private_redis: PrivateRedis, down: str
) -> None:
    port = private_redis.port
    client = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        ids = [await client.xadd("orders", {"n": str(n)}) for n in range(3)]
        getattr(private_redis, down)()
        assert not services.redis_answers(port)
        with pytest.raises(redis.ConnectionError):
            await client.ping()
        private_redis.start()
        assert private_redis.port == port
        entries = await client.xrange("orders")
        assert entries is not None
        assert [entry_id for entry_id, _ in entries] == ids
    finally:
        await client.aclose()


def test_redis_url_without_a_local_redis_starts_a_private_one(
    tmp_path: Path, redis_server: str
) -> None:
    (closed,) = free_ports(1)
    with ExitStack() as stack:
        url = services.redis_url(stack, tmp_path, local_port=closed)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert port not in (closed, services.LOCAL_REDIS_PORT)
        assert services.redis_answers(port)
    assert not services.redis_answers(port)
    assert (tmp_path / "redis.log").read_text()


def test_postgres_dsn_without_a_local_postgres_starts_a_private_one(
    tmp_path: Path, postgres_server: str
) -> None:
    (closed,) = free_ports(1)
    with ExitStack() as stack:
        dsn = services.postgres_dsn(stack, tmp_path, local_port=closed)
        assert dsn.endswith("/test")
        assert f":{closed}/" not in dsn
        assert f":{services.LOCAL_POSTGRES_PORT}/" not in dsn
        assert services.postgres_answers(dsn)
    assert not services.postgres_answers(dsn)
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()


async def test_private_rabbitmq_restart_drops_clients_and_keeps_persistent_messages(
    private_rabbitmq: PrivateRabbitMQ,
) -> None:
    name = services.unique("restart")
    connection = await aio_pika.connect(private_rabbitmq.url, timeout=10)
    closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def on_close(_: object, exc: BaseException | None) -> None:
        if not closed.done():
            closed.set_result(exc)

    connection.close_callbacks.add(on_close)
    try:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True)
        persistent = aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(persistent, routing_key=name)
        began = time.monotonic()
        private_rabbitmq.stop_app()
        dropped = await asyncio.wait_for(closed, timeout=10)
        assert isinstance(dropped, aiormq.exceptions.ConnectionClosed), dropped
        assert "CONNECTION_FORCED" in str(dropped)
        assert not amqp_answers(private_rabbitmq.port)
        private_rabbitmq.start_app()
        restart = time.monotonic() - began
    finally:
        await connection.close()
    async with await aio_pika.connect(private_rabbitmq.url, timeout=10) as again:
        channel = await again.channel()
        queue = await channel.declare_queue(name, durable=True, passive=True)
        message = await queue.get(timeout=5, fail=True)
        assert message is not None
        await message.ack()
        assert message.body == b"kept"
        await queue.delete()
    assert restart < 15, f"stop_app + start_app took {restart:.1f}s"
