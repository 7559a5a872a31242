"""The issue's end-to-end stories for RabbitMQ: a consumer App in a subprocess, real signals.

1. 10,000 ids into PostgreSQL through SIGTERMs and restarts: none lost.
3. A handler past the stop timeout: handed back, named, exit 3, delivered again.
5. The broker process stopped and restarted: reconnect and resume; a SIGTERM
   while it is away ends within the stop budget.
6. A poison message: max_deliveries deliveries, dead-lettered, named; the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from conftest import Service
from consumers.rabbitmq_service import STOP_TIMEOUT
from consumers.rabbitmq_support import Amqp
from rabbitmq_node import PrivateRabbitMQ
from services import Names

MODULE = "consumers.rabbitmq_service"
#: A pattern no line matches: waiting on it reads the output for a while.
NEVER = r"(?!)"
#: Each run of test 1 takes about this many more ids before its SIGTERM.
PER_RUN = 2500
CONCURRENCY = 16

Start = Callable[..., Service]


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[Amqp]:
    async with Amqp(amqp_url) as client:
        yield client


async def wait_for(svc: Service, pattern: str, timeout: float = 15.0) -> re.Match[str]:
    return await asyncio.to_thread(svc.wait_for, pattern, timeout)


async def ends(svc: Service, timeout: float = 15.0) -> int:
    return await asyncio.to_thread(svc.wait, timeout)


async def wait_for_nth(svc: Service, pattern: str, n: int, timeout: float = 15.0) -> None:
    """Wait until ``n`` lines match ``pattern`` (:meth:`Service.wait_for` finds the first)."""
    rx = re.compile(pattern)
    async with asyncio.timeout(timeout):
        while sum(1 for line in svc.lines if rx.search(line)) < n:
            with contextlib.suppress(AssertionError):  # no such line yet: read on
                await wait_for(svc, NEVER, 0.1)


def counted(svc: Service, what: str) -> int:
    (n,) = [int(e.rsplit(" ", 1)[1]) for e, _ in svc.events(f"{what} ")]
    return n


def account(svc: Service) -> dict[str, Any]:
    found: dict[str, Any] = svc.report()["accounts"]["rabbitmq"]
    return found


async def test_10000_ids_through_sigterms_and_restarts_none_lost(
    amqp: Amqp,
    amqp_queue: Names,
    amqp_url: str,
    postgres_dsn: str,
    pg_table: str,
    service: Start,
) -> None:
    queue = await amqp.declare(amqp_queue("ids"))
    ids = [f"id-{i:05d}" for i in range(10_000)]
    await amqp.publish_many(queue, ids)
    db = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        runs = duplicates = 0
        while True:
            runs += 1
            assert runs <= 10, "the queue never emptied"
            before = await db.fetchval(f"SELECT count(*) FROM {pg_table}")
            svc = service(MODULE, "ids", amqp_url, queue, postgres_dsn, pg_table)
            await wait_for(svc, r"^EVENT ready ")
            target = min(before + PER_RUN, len(ids))
            async with asyncio.timeout(30):
                while await db.fetchval(f"SELECT count(*) FROM {pg_table}") < target:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            svc.signal()
            assert await ends(svc) == 0, svc.output
            duplicates += counted(svc, "duplicates")
            run = account(svc)
            assert (run["unacked"], run["requeued_cut"], run["failed"]) == (0, [], 0), run
            assert (
                run["acked"]
                == run["fetched"]
                == counted(svc, "inserted") + counted(svc, "duplicates")
            )
            if await amqp.ready(queue) == 0:
                break
        rows = await db.fetch(f"SELECT id FROM {pg_table}")
    finally:
        await db.close(timeout=10)
    assert sorted(r["id"] for r in rows) == ids
    assert runs >= 3  # it was stopped mid-way at least twice
    # Only a message in flight at a signal can be handled twice; a clean stop acks them all.
    assert duplicates <= CONCURRENCY * (runs - 1)


async def test_a_handler_past_the_stop_timeout_is_named_exit_3_and_delivered_again(
    amqp: Amqp, amqp_queue: Names, amqp_url: str, service: Start
) -> None:
    queue = await amqp.declare(amqp_queue("hang"))
    await amqp.publish(queue, ["hang"])
    first = service(MODULE, "hang", amqp_url, queue)
    await wait_for(first, r"^EVENT hanging ")
    first.signal()
    assert await ends(first) == 3, first.output
    assert account(first)["requeued_cut"] == ["hang"]
    assert any("message hang" in cut for cut in first.phase("stop_servers")["cut"])
    assert "message hang" in first.output  # the report, as text, in the log
    second = service(MODULE, "hang", amqp_url, queue)
    await wait_for(second, r"^EVENT handled hang 2 ")
    second.signal()
    assert await ends(second) == 0, second.output
    assert await amqp.ready(queue) == 0


async def test_a_poison_message_is_dead_lettered_named_and_the_others_go_on(
    amqp: Amqp, amqp_queue: Names, amqp_url: str, service: Start
) -> None:
    queue = await amqp.declare(amqp_queue("poison"))
    dead = amqp_queue("poison-dead")
    others = [f"m{i}" for i in range(20)]
    await amqp.publish(queue, ["bad", *others])
    svc = service(MODULE, "poison", amqp_url, queue, dead)
    line = await wait_for(svc, rf"message bad dead-lettered to {dead} after 3 deliveries.*")
    assert "ValueError: cannot parse" in line.group(0)
    for i in others:
        await wait_for(svc, rf"^EVENT handled {i} ")
    svc.signal()
    assert await ends(svc) == 0, svc.output
    assert [e for e, _ in svc.events("failed bad")] == [f"failed bad {n}" for n in (1, 2, 3)]
    run = account(svc)
    assert (run["acked"], run["failed"], run["retried"], run["dead_lettered"]) == (20, 3, 2, 1)
    assert await amqp.ready(queue) == 0
    (letter,) = await amqp.take(dead)
    assert letter.message_id == "bad"
    assert letter.headers["x-quiesce-deliveries"] == 3


async def test_a_restarted_broker_is_reconnected_and_a_sigterm_while_it_is_away_is_bounded(
    private_rabbitmq: PrivateRabbitMQ, service: Start
) -> None:
    node = private_rabbitmq
    async with Amqp(node.url) as amqp:
        queue = await amqp.declare("outage")
        await amqp.publish(queue, ["before"])
    svc = service(MODULE, "outage", node.url, queue)
    await wait_for(svc, r"^EVENT handled before ")
    await asyncio.to_thread(node.stop)  # the broker process goes away
    await wait_for(svc, r"consumer rabbitmq lost .* reconnecting in .* \(attempt 1\)")
    await wait_for(svc, r"\(attempt 3\)")  # it keeps trying, with backoff
    await asyncio.to_thread(node.start)
    await wait_for(svc, r"consumer rabbitmq reconnected", timeout=20)
    async with Amqp(node.url) as amqp:
        await amqp.publish(queue, ["after"])
    await wait_for(svc, r"^EVENT handled after ")
    await asyncio.to_thread(node.stop_app)  # away again; SIGTERM now
    await wait_for_nth(svc, r"consumer rabbitmq lost .* \(attempt 1\)", 2)
    sent = svc.signal()
    assert await ends(svc) == 0, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - sent < STOP_TIMEOUT
    run = account(svc)
    handled = [e for e, _ in svc.events("handled ")]
    # "before" comes twice if its ack was still on the way as the broker went down.
    assert set(handled) == {"handled before", "handled after"}
    assert (run["acked"], run["unacked"], run["requeued_cut"]) == (len(handled), 0, [])
