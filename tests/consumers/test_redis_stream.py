"""RedisStreamConsumer against a real Redis: what becomes of each entry, and when.

Each test has a stream of its own (``redis_key``). Entries another consumer of
the group left pending are made with plain ``XREADGROUP`` calls, the way a
process that died leaves them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

import quiesce
from consumers.polling import wait_until
from consumers.redis_support import add, entry_ids, pending, unread
from quiesce.consumers.message import Message
from quiesce.consumers.redis_stream import Fields, RedisStreamConsumer
from quiesce.errors import ConfigError, StartError
from services import Names, PrivateRedis

Handle = Callable[[Message[Fields]], Awaitable[None]]


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def consumer_of(url: str, stream: str, handle: Handle, **options: Any) -> RedisStreamConsumer:
    options.setdefault("consumer", "c1")
    consumer = RedisStreamConsumer(handle, url=url, stream=stream, group="g", **options)
    consumer.check()
    return consumer


# -- options -------------------------------------------------------------------


def test_the_defaults() -> None:
    async def handle(message: Message[Fields]) -> None:
        pass

    consumer = RedisStreamConsumer(handle, url="redis://127.0.0.1:6379/0", stream="s", group="g")
    consumer.check()
    assert consumer.consumer == socket.gethostname()  # a restart in place re-reads its own
    assert (consumer.name, consumer.broker) == ("redis-stream", "redis")
    assert (consumer.concurrency, consumer.max_deliveries, consumer.dead_letter) == (16, 5, None)
    assert (consumer.claim_idle, consumer.start_id) == (60.0, "0")
    assert (consumer.block, consumer.retry_delay, consumer.stop_timeout) == (2.0, 1.0, None)
    assert (consumer.connect_timeout, consumer.call_timeout) == (10.0, 5.0)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"stream": ""}, r"stream='' must be a non-empty string"),
        ({"group": 3}, r"group=3 must be a non-empty string"),
        ({"consumer": ""}, r"consumer='' must be a non-empty string"),
        ({"start_id": ""}, r"start_id='' must be a non-empty string"),
        ({"claim_idle": 0}, r"claim_idle=0: must be a positive number of seconds"),
        ({"block": 0.0001}, r"block=0.0001: must be 0.001 seconds or more"),
        ({"retry_delay": -1}, r"retry_delay=-1: must be zero or more seconds"),
        ({"dead_letter": "s"}, r"dead_letter='s' is the stream itself"),
        ({"url": "http://h/0"}, r"url 'http://h/0': Redis URL must specify"),
        ({"url": "redis://:pw@h:99999/0"}, r"url 'redis://h/0': Port out of range"),
        ({"url": "redis://h/0?pasword=x"}, r"url 'redis://h/0': .*unexpected keyword.*pasword"),
        ({"concurrency": 0}, r"concurrency=0 must be a whole number"),
    ],
)
def test_bad_options_are_a_bad_configuration(options: dict[str, Any], error: str) -> None:
    async def handle(message: Message[Fields]) -> None:
        pass

    kw: dict[str, Any] = {"url": "redis://127.0.0.1:6379/0", "stream": "s", "group": "g"}
    consumer = RedisStreamConsumer(handle, **(kw | options))
    with pytest.raises(ConfigError, match=r"consumer 'redis-stream': " + error):
        consumer.check()


async def test_the_logs_and_errors_name_the_url_without_its_password() -> None:
    async def handle(message: Message[Fields]) -> None:
        pass

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"redis://user:secret@127.0.0.1:{port}/2?password=secret"
    consumer = RedisStreamConsumer(handle, url=url, stream="s", group="g", connect_timeout=1.0)
    assert consumer._where() == f"redis://user@127.0.0.1:{port}/2"
    with pytest.raises(StartError) as failed:
        await consumer.start()
    assert f"redis://user@127.0.0.1:{port}/2: ConnectionError" in str(failed.value)
    assert "secret" not in str(failed.value)


# -- reading -------------------------------------------------------------------


async def test_a_new_group_reads_what_the_stream_had_and_with_dollar_only_what_comes(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    old = await add(r, stream, 3)
    seen: list[str] = []

    async def handle(message: Message[Fields]) -> None:
        seen.append(message.id)

    consumer = consumer_of(redis_url, stream, handle)  # start_id="0" by default
    await consumer.start()
    await wait_until(lambda: seen == old)
    assert await consumer.stop(1.0) == []

    late: list[str] = []

    async def handle_late(message: Message[Fields]) -> None:
        late.append(message.id)

    other = RedisStreamConsumer(
        handle_late, url=redis_url, stream=stream, group="g2", consumer="c1", start_id="$"
    )
    await other.start()
    new = await add(r, stream, 2)
    await wait_until(lambda: late == new)
    assert await other.stop(1.0) == []


async def test_it_reads_only_for_free_handlers_and_a_clean_stop_leaves_nothing_pending(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    ids = await add(r, stream, 50)
    started: list[str] = []
    release = asyncio.Event()

    async def handle(message: Message[Fields]) -> None:
        started.append(message.id)
        await release.wait()

    consumer = consumer_of(redis_url, stream, handle, concurrency=4, block=30.0)
    await consumer.start()
    await wait_until(lambda: len(started) == 4)
    assert started == ids[:4]
    assert set(await pending(r, stream)) == set(ids[:4])
    stopping = asyncio.create_task(consumer.stop(5.0))
    await wait_until(lambda: consumer._loop_task is not None and consumer._loop_task.done())
    later = await add(r, stream, 5)  # arrive during the stop: not fetched
    release.set()
    began = time.monotonic()
    assert await stopping == []
    assert time.monotonic() - began < 1.0  # not the blocking read's 30 s
    assert await pending(r, stream) == {}
    account = consumer.account()
    assert (account["fetched"], account["acked"], account["requeued_not_started"]) == (4, 4, 0)
    # Everything else is still unread by the group: the next reader gets all of it.
    rest = await r.xreadgroup("g", "next", {stream: ">"}, count=100)
    assert entry_ids(rest) == ids[4:] + later


async def test_a_blocking_read_is_cut_at_the_stop_and_its_connection_never_reused(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    seen: list[str] = []

    async def handle(message: Message[Fields]) -> None:
        seen.append(message.id)

    async def blocked_reader() -> str | None:
        for client in await r.client_list():
            blocked = client["cmd"] == "xreadgroup" and "b" in client["flags"]
            if blocked and int(client["id"]) == consumer._reader_id:
                return str(client["id"])
        return None

    consumer = consumer_of(redis_url, stream, handle, block=30.0)
    await consumer.start()

    async def is_blocked() -> bool:
        return await blocked_reader() is not None

    await wait_until(is_blocked)
    reader = consumer._reader_id
    began = time.monotonic()
    assert await consumer.stop(5.0) == []
    assert time.monotonic() - began < 0.5
    clients = {int(c["id"]) for c in await r.client_list()}
    assert reader not in clients  # closed, not given back to a pool still blocked

    await consumer.start()  # the same consumer again: a new read connection that works
    (new,) = await add(r, stream, 1)
    await wait_until(lambda: seen == [new])
    assert consumer._reader_id != reader
    assert await consumer.stop(1.0) == []
    assert await pending(r, stream) == {}


async def test_at_the_start_it_rereads_its_own_pending_entries_first_with_their_counts(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    ids = await add(r, stream, 6)
    await r.xgroup_create(stream, "g", id="0")
    left = entry_ids(await r.xreadgroup("g", "c1", {stream: ">"}, count=3))  # a run that died
    theirs = entry_ids(await r.xreadgroup("g", "alive", {stream: ">"}, count=1))
    seen: list[tuple[str, int]] = []

    async def handle(message: Message[Fields]) -> None:
        seen.append((message.id, message.delivery_count))

    consumer = consumer_of(redis_url, stream, handle, concurrency=1)
    await consumer.start()
    await wait_until(lambda: len(seen) == 5)
    assert await consumer.stop(1.0) == []
    assert seen == [(i, 2) for i in left] + [(i, 1) for i in ids[4:]]
    assert set(await pending(r, stream)) == set(theirs)  # another's, not idle: not taken


async def test_an_entry_deleted_from_the_stream_while_pending_is_acked_not_run(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names, caplog: pytest.LogCaptureFixture
) -> None:
    stream = redis_key("orders")
    ids = await add(r, stream, 2)
    await r.xgroup_create(stream, "g", id="0")
    await r.xreadgroup("g", "c1", {stream: ">"}, count=2)
    await r.xdel(stream, ids[0])
    seen: list[str] = []

    async def handle(message: Message[Fields]) -> None:
        seen.append(message.id)

    consumer = consumer_of(redis_url, stream, handle)
    await consumer.start()
    await wait_until(lambda: seen == ids[1:])
    assert await consumer.stop(1.0) == []
    assert await pending(r, stream) == {}
    assert f"entries {ids[0]} were deleted from the stream while pending: acked" in caplog.text


# -- the stop --------------------------------------------------------------------


async def test_stops_in_the_middle_of_a_backlog_stop_fetching_at_once_and_lose_no_entry(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    ids = await add(r, stream, 3000)
    seen: list[str] = []

    async def handle(message: Message[Fields]) -> None:
        seen.append(message.id)

    runs = 0
    for _ in range(30):
        consumer = consumer_of(redis_url, stream, handle, claim_idle=30.0)
        await consumer.start()
        runs += 1
        await wait_until(lambda: consumer.fetched >= 300 or len(set(seen)) == len(ids))  # noqa: B023
        began = time.monotonic()
        assert await consumer.stop(2.0) == []
        assert time.monotonic() - began < 0.3  # the read stopped at once, not at the deadline
        left = await pending(r, stream)
        # Nothing pending but what this stop handed back (a read its cancel cut).
        assert len(left) == consumer.account()["requeued_not_started"]
        assert all(p["time_since_delivered"] >= 30_000 for p in left.values())
        if not left and await unread(r, stream) == 0:
            break
    assert sorted(seen) == sorted(ids)  # each once: none lost, none run twice
    assert runs >= 5


async def test_a_handler_cut_at_the_deadline_is_handed_back_claimable_at_once(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    x, y = await add(r, stream, 2)

    async def hang(message: Message[Fields]) -> None:
        await asyncio.sleep(3600)

    consumer = consumer_of(redis_url, stream, hang, claim_idle=30.0)
    await consumer.start()
    await wait_until(lambda: consumer.in_flight == 2)
    began = time.monotonic()
    cut = await consumer.stop(0.2)
    assert time.monotonic() - began < 0.2 + 0.25
    assert sorted(cut) == [f"message {i} [handler cut at 0.2s, handed back]" for i in (x, y)]
    assert sorted(consumer.cut) == [x, y]
    left = await pending(r, stream)
    assert {i: (p["consumer"], p["times_delivered"]) for i, p in left.items()} == {
        x: ("c1", 1),  # the hand back is not a delivery
        y: ("c1", 1),
    }
    assert all(p["time_since_delivered"] >= 30_000 for p in left.values())
    # Any consumer's claim of entries idle over claim_idle takes them now...
    taken: Any = await r.xclaim(stream, "g", "other", 30_000, [x])
    assert [i for i, _ in taken] == [x]
    # ...and what nobody claimed this consumer re-reads at its next start.
    seen: list[tuple[str, int]] = []

    async def handle(message: Message[Fields]) -> None:
        seen.append((message.id, message.delivery_count))

    again = consumer_of(redis_url, stream, handle, claim_idle=30.0)
    await again.start()
    await wait_until(lambda: seen == [(y, 2)])
    assert await again.stop(1.0) == []
    assert set(await pending(r, stream)) == {x}


async def test_what_a_cut_read_left_pending_is_handed_back_at_the_stop_and_counted(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    (first,) = await add(r, stream, 1)
    release = asyncio.Event()

    async def handle(message: Message[Fields]) -> None:
        await release.wait()

    consumer = consumer_of(redis_url, stream, handle, claim_idle=30.0, concurrency=1)
    await consumer.start()
    await wait_until(lambda: consumer.in_flight == 1)
    # The entries of a read whose reply the cancel cut: pending to c1, held by nobody.
    (lost,) = await add(r, stream, 1)
    assert entry_ids(await r.xreadgroup("g", "c1", {stream: ">"}, count=1)) == [lost]
    stopping = asyncio.create_task(consumer.stop(5.0))
    await wait_until(lambda: consumer.account()["requeued_not_started"] == 1)
    release.set()
    assert await stopping == []
    left = await pending(r, stream)
    assert list(left) == [lost]  # the one in flight finished and was acked
    assert left[lost]["time_since_delivered"] >= 30_000
    assert consumer.account()["acked"] == 1
    assert first not in left


async def test_a_handler_failing_during_the_stop_is_handed_back_at_once(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    (x,) = await add(r, stream, 1)
    release = asyncio.Event()

    async def fail(message: Message[Fields]) -> None:
        await release.wait()
        raise ValueError("no")

    consumer = consumer_of(redis_url, stream, fail, claim_idle=30.0)
    await consumer.start()
    await wait_until(lambda: consumer.in_flight == 1)
    stopping = asyncio.create_task(consumer.stop(5.0))
    await wait_until(lambda: consumer._stopping)
    release.set()
    assert await stopping == []
    left = await pending(r, stream)
    assert (left[x]["times_delivered"], left[x]["consumer"]) == (1, "c1")
    assert left[x]["time_since_delivered"] >= 30_000
    assert consumer.account()["retried"] == 1


async def test_a_broker_that_stops_answering_does_not_hold_the_stop(
    private_redis: PrivateRedis, redis_key: Names
) -> None:
    r = redis.asyncio.Redis.from_url(private_redis.url, decode_responses=True)
    stream = "orders"
    await add(r, stream, 4)
    await r.aclose()
    release = asyncio.Event()

    async def handle(message: Message[Fields]) -> None:
        await release.wait()

    consumer = consumer_of(private_redis.url, stream, handle, concurrency=4)
    await consumer.start()
    await wait_until(lambda: consumer.in_flight == 4)
    assert private_redis.daemon is not None
    assert private_redis.daemon.proc is not None
    pid = private_redis.daemon.proc.pid
    os.kill(pid, signal.SIGSTOP)  # connected, and silent
    try:
        release.set()  # the acks go out and get no answer
        began = time.monotonic()
        assert await consumer.stop(0.5) == []
        took = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGCONT)
    assert took < 0.5 + 0.25  # inside the margin the App gives a server's stop()
    assert consumer.account()["unacked"] == 4


# -- claims, retries, dead letters -----------------------------------------------


async def test_entries_a_dead_consumer_left_pending_are_claimed_after_claim_idle(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "quiesce")
    stream = redis_key("orders")
    ids = await add(r, stream, 5)
    await r.xgroup_create(stream, "g", id="0")
    assert entry_ids(await r.xreadgroup("g", "dead", {stream: ">"})) == ids
    died = time.monotonic()
    seen: dict[str, tuple[int, float]] = {}

    async def handle(message: Message[Fields]) -> None:
        seen[message.id] = (message.delivery_count, time.monotonic())

    consumer = consumer_of(redis_url, stream, handle, claim_idle=0.5)
    await consumer.start()
    await wait_until(lambda: len(seen) == 5)
    assert await consumer.stop(1.0) == []
    assert sorted(seen) == ids
    assert {count for count, _ in seen.values()} == {2}
    assert min(at for _, at in seen.values()) - died >= 0.5
    assert await pending(r, stream) == {}
    assert f"consumer redis-stream claimed 5 entries pending over 0.5s: {' '.join(ids)}" in (
        caplog.text
    )


async def test_a_failing_entry_comes_back_counted_then_is_dead_lettered_and_the_rest_go_on(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names, caplog: pytest.LogCaptureFixture
) -> None:
    stream = redis_key("orders")
    dead = f"{stream}:dead"
    good = await add(r, stream, 3)
    (poison,) = await add(r, stream, 1, poison="yes")
    tries: list[tuple[int, float]] = []
    handled: list[str] = []

    async def handle(message: Message[Fields]) -> None:
        if message.body.get("poison"):
            tries.append((message.delivery_count, time.monotonic()))
            raise ValueError("cannot parse")
        handled.append(message.id)

    consumer = consumer_of(
        redis_url, stream, handle, max_deliveries=3, retry_delay=0.2, dead_letter=dead
    )
    await consumer.start()
    await wait_until(lambda: consumer.account()["dead_lettered"] == 1)
    assert await consumer.stop(1.0) == []
    assert handled == good
    assert [count for count, _ in tries] == [1, 2, 3]
    assert all(b - a >= 0.2 for (_, a), (_, b) in itertools.pairwise(tries))
    found: Any = await r.xrange(dead)
    ((_, fields),) = found
    assert fields == {
        "n": "0",
        "poison": "yes",
        "dead_letter.id": poison,
        "dead_letter.stream": stream,
        "dead_letter.group": "g",
        "dead_letter.consumer": "c1",
        "dead_letter.error": "ValueError: cannot parse",
        "dead_letter.deliveries": "3",
    }
    assert await pending(r, stream) == {}
    account = consumer.account()
    assert (account["failed"], account["retried"], account["acked"]) == (3, 2, 3)
    assert f"message {poison} dead-lettered to {dead} after 3 deliveries" in caplog.text


async def test_without_a_dead_letter_stream_a_dead_entry_is_acked_with_an_error_line(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names, caplog: pytest.LogCaptureFixture
) -> None:
    stream = redis_key("orders")
    (x,) = await add(r, stream, 1)

    async def fail(message: Message[Fields]) -> None:
        raise ValueError("no")

    consumer = consumer_of(redis_url, stream, fail, max_deliveries=1)
    await consumer.start()
    await wait_until(lambda: consumer.account()["dropped"] == 1)
    assert await consumer.stop(1.0) == []
    assert await pending(r, stream) == {}
    (line,) = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert f"message {x} dropped (no dead_letter set) after 1 deliveries" in line.getMessage()


async def test_the_acks_of_handlers_that_return_together_go_in_one_call(
    private_redis: PrivateRedis,
) -> None:
    r = redis.asyncio.Redis.from_url(private_redis.url, decode_responses=True)
    stream = "orders"
    await add(r, stream, 16)
    release = asyncio.Event()

    async def handle(message: Message[Fields]) -> None:
        await release.wait()

    consumer = consumer_of(private_redis.url, stream, handle, concurrency=16)
    await consumer.start()
    await wait_until(lambda: consumer.in_flight == 16)
    await r.config_resetstat()
    release.set()
    await wait_until(lambda: consumer.account()["acked"] == 16)
    stats = await r.info("commandstats")
    assert await consumer.stop(1.0) == []
    assert stats["cmdstat_xack"]["calls"] == 1
    assert await pending(r, stream) == {}
    await r.aclose()


# -- in an App ------------------------------------------------------------------


async def test_by_default_it_gets_the_apps_stop_budget_and_the_report_names_the_cut_entry(
    redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("orders")
    (x,) = await add(r, stream, 1)

    async def hang(message: Message[Fields]) -> None:
        await asyncio.sleep(3600)

    consumer = RedisStreamConsumer(hang, url=redis_url, stream=stream, group="g")  # defaults
    app = quiesce.App(name="consumers", servers=[consumer], stop_timeout=1.0)

    async def stop_once_handling() -> None:
        await wait_until(lambda: consumer.in_flight == 1)
        app.stop("test")

    stopper = asyncio.create_task(stop_once_handling())
    report = await app.serve()
    await stopper
    assert report.exit_code == quiesce.ExitCode.INCOMPLETE
    (cut,) = report.step("stop_servers").cut
    assert cut.startswith(f"server redis-stream: message {x} [handler cut at 0.")
    assert report.accounts["redis-stream"]["requeued_cut"] == [x]
    assert report.stop_duration < 1.0 + 0.3
    left = await pending(r, stream)
    assert left[x]["consumer"] == socket.gethostname()
    assert left[x]["time_since_delivered"] >= 60_000  # the default claim_idle
