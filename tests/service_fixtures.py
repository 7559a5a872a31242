"""Real brokers and a database (see tests/services.py), a plugin of tests/conftest.py.

Session fixtures give the machine's services (or private ones when they are
not there); the ``private_*`` fixtures give servers a test may stop and start
again. The shared services keep what a test leaves: use ``redis_key``,
``amqp_queue`` and ``pg_table`` for what a test creates, or delete it yourself.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

import aio_pika
import asyncpg
import pytest
import redis.asyncio

import services
from rabbitmq_node import PrivateRabbitMQ, amqp_answers, rabbitmq_programs
from services import Names, PrivateRedis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:6379/0``, or a private Redis's URL when no Redis answers there."""
    with ExitStack() as stack:
        yield services.redis_url(stack, tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``amqp://guest:guest@127.0.0.1:5672/``, or a private node's when no broker answers there."""
    with ExitStack() as stack:
        yield services.amqp_url(stack, tmp_path_factory.mktemp("rabbitmq"))


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:5432/test``, or a private cluster's if it is not there."""
    with ExitStack() as stack:
        yield services.postgres_dsn(stack, tmp_path_factory.mktemp("postgres"))


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The redis-server program (installed at collection when a selected test needs it)."""
    return services.redis_program()


@pytest.fixture(scope="session")
def rabbitmq_server() -> str:
    """The rabbitmq-server program (installed at collection when a selected test needs it)."""
    return rabbitmq_programs()[0]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The postgres program (installed at collection when a selected test needs it)."""
    return services.postgres_programs()[1]


@pytest.fixture
def private_redis(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateRedis]:
    """A Redis of this test's own (append-only, fsync always), killed at the end."""
    server = PrivateRedis(tmp_path_factory.mktemp("private-redis"))
    yield server
    server.kill()


@pytest.fixture(scope="module")
def _rabbitmq_node(
    rabbitmq_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateRabbitMQ]:
    node = PrivateRabbitMQ(tmp_path_factory.mktemp("private-rabbitmq"))
    yield node
    node.close()


@pytest.fixture
def private_rabbitmq(_rabbitmq_node: PrivateRabbitMQ) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node shared by a module's tests (it boots in ~5 s) that a test may restart.

    Each test gets it running, and it is running again after the test (a test
    that stopped it and failed does not leave it stopped for the next one).
    """
    _rabbitmq_node.ensure_running()
    yield _rabbitmq_node
    _rabbitmq_node.ensure_running()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of :func:`redis_url`, closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_key(redis_client: redis.asyncio.Redis) -> AsyncIterator[Names]:
    """``redis_key("orders")`` names a key of this test's own.

    After the test every key starting with one of these names (a stream and
    its ``<name>:dead`` stream alike) is deleted.
    """
    names = Names()
    yield names
    await delete_keys(redis_client, names.made)


async def delete_keys(client: redis.asyncio.Redis, names: list[str]) -> None:
    """Delete every key that starts with one of ``names``."""
    for name in names:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", name) + "*"
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            await client.delete(*keys)


@pytest.fixture
async def amqp_queue(amqp_url: str) -> AsyncIterator[Names]:
    """``amqp_queue("orders")`` names a queue of this test's own, deleted after the test.

    Queues the code under test derives from it (a dead-letter queue) must be
    added with ``amqp_queue.track(name)``.
    """
    names = Names()
    yield names
    if names.made:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for name in names.made:
                await channel.queue_delete(name, timeout=10)


@pytest.fixture
async def pg_table(postgres_dsn: str) -> AsyncIterator[str]:
    """The name of a table ``(id text primary key)`` of this test's own, dropped after it."""
    table = services.unique("ids")
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY)", timeout=10)
        yield table
        await conn.execute(f"DROP TABLE IF EXISTS {table}", timeout=10)
    finally:
        await conn.close(timeout=10)


#: A marker for the tests that start a server of their own (a RabbitMQ node boots in ~4 s).
PRIVATE = "private_server"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{PRIVATE}: uses a private broker (private_redis, private_rabbitmq); "
        f'runs in make test, -m "not {PRIVATE}" leaves it out',
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests with a private server; install the servers the selected tests may start.

    Installing happens here, outside every test's timeout, which a fresh
    machine's ``apt-get install`` may exceed. The ``*_url`` fixtures need a
    server only when the local service is not there.
    """
    wanted: set[str] = set()
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        wanted |= fixtures
        if fixtures & {"private_redis", "private_rabbitmq"}:
            item.add_marker(PRIVATE)
    if "redis_server" in wanted or ("redis_url" in wanted and not services.redis_answers()):
        services.redis_program()
    if "rabbitmq_server" in wanted or ("amqp_url" in wanted and not amqp_answers()):
        rabbitmq_programs()
    local_pg = services.postgres_dsn_at(services.LOCAL_POSTGRES_PORT)
    if "postgres_server" in wanted or (
        "postgres_dsn" in wanted and not services.postgres_answers(local_pg)
    ):
        services.postgres_programs()
