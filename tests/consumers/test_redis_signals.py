"""The Redis Streams consumer under real signals: a subprocess per run (issue 12, tests 1 and 3-6).

The service is tests/consumers/redis_service.py; the tests write the entries,
send the signals, stop and start the broker, and read the group's state.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio

from conftest import Service
from consumers.polling import wait_until
from consumers.redis_support import add, pending, unread
from services import Names, PrivateRedis

MODULE = "consumers.redis_service"
Start = Callable[..., Service]


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def pump(svc: Service) -> None:
    """Read what the service printed so far into ``svc.lines``."""
    with contextlib.suppress(AssertionError):
        svc.wait_for(r"(?!)", timeout=0.005)  # matches nothing


def handled(svc: Service) -> list[tuple[str, int, float]]:
    """(entry id, delivery count, when) of each ``EVENT handled`` line printed so far."""
    pump(svc)
    found = []
    for what, at in svc.events("handled "):
        _, entry, count = what.split()
        found.append((entry, int(count), at))
    return found


def in_flight_at_the_stop(svc: Service) -> int:
    (waited,) = [w for w in svc.phase("stop_servers")["waited_for"] if "redis-stream" in w]
    m = re.search(r"\((\d+) in flight\)", waited)
    return int(m.group(1)) if m else 0


def saw(svc: Service, pattern: str) -> bool:
    """Whether the service printed a line matching ``pattern`` by now."""
    try:
        svc.wait_for(pattern, timeout=0.005)
    except AssertionError:
        return False
    return True


async def wait_for_line(svc: Service, pattern: str, timeout: float = 10.0) -> None:
    """Wait for a line of the service's while the test's event loop goes on."""
    try:
        await wait_until(lambda: saw(svc, pattern), timeout)
    except TimeoutError:
        raise AssertionError(f"no line matching {pattern!r}; output:\n{svc.drain()}") from None


async def test_1_ten_thousand_ids_through_sigterms_none_lost_no_duplicate_past_those_in_flight(
    service: Start,
    redis_url: str,
    r: redis.asyncio.Redis,
    redis_key: Names,
    postgres_dsn: str,
    pg_table: str,
) -> None:
    stream = redis_key("ids")
    ids = [f"id-{i}" for i in range(10_000)]
    for chunk in range(0, len(ids), 1000):
        async with r.pipeline(transaction=False) as pipe:
            for i in ids[chunk : chunk + 1000]:
                _ = pipe.xadd(stream, {"id": i})
            await pipe.execute()
    args = ["--url", redis_url, "--stream", stream, "--consumer", "c1", "--quiet"]
    args += ["--dsn", postgres_dsn, "--table", pg_table, "--budget", "5"]
    runs = duplicates = in_flight = 0
    while True:
        runs += 1
        assert runs <= 30, "the stream never emptied"
        svc = service(MODULE, "ids", *args)
        await wait_for_line(svc, r"EVENT ready ")

        async def mid_way_or_done(svc: Service = svc) -> bool:
            if svc.proc.poll() is not None:
                return True  # it exited on its own: the assertion below says how
            if saw(svc, r"^EVENT progress 1500 "):
                return True
            return await unread(r, stream) == 0 and await pending(r, stream) == {}

        await wait_until(mid_way_or_done, timeout=30)
        svc.signal(signal.SIGTERM)
        assert svc.wait() == 0, svc.output
        account = svc.report()["accounts"]["redis-stream"]
        assert account["requeued_cut"] == [], svc.output
        assert account["acked"] == account["fetched"], account
        in_flight += in_flight_at_the_stop(svc)
        duplicates += len(svc.events("duplicate "))
        if await unread(r, stream) == 0 and await pending(r, stream) == {}:
            break
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        stored = {row["id"] for row in await conn.fetch(f"SELECT id FROM {pg_table}")}
    finally:
        await conn.close(timeout=10)
    assert stored == set(ids)  # none lost
    assert runs >= 2  # it was stopped mid-way at least once
    assert duplicates <= in_flight
    assert duplicates == 0  # each stop acked every entry it took


async def test_3_a_handler_past_the_stop_timeout_is_handed_back_named_and_redelivered(
    service: Start, redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("hang")
    before = await add(r, stream, 3)
    (stuck,) = await add(r, stream, 1, hang="1")
    args = ["--url", redis_url, "--stream", stream, "--consumer", "c1", "--stop-timeout", "0.3"]
    svc = service(MODULE, "hang", *args)
    await wait_until(lambda: len(handled(svc)) == 3 or svc.proc.poll() is not None)
    await wait_for_line(svc, r"EVENT handled " + re.escape(before[-1]))
    sent = svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - sent < 0.3 + 1.0
    assert svc.report()["accounts"]["redis-stream"]["requeued_cut"] == [stuck]
    cut = svc.phase("stop_servers")["cut"]
    assert cut == [f"server redis-stream: message {stuck} [handler cut at 0.3s, handed back]"]
    left = await pending(r, stream)
    assert (left[stuck]["consumer"], left[stuck]["times_delivered"]) == ("c1", 1)

    again = service(MODULE, "hang", *args, "--no-hang")
    await wait_for_line(again, r"EVENT handled " + re.escape(stuck) + r" 2 ")
    again.signal(signal.SIGTERM)
    assert again.wait() == 0, again.output
    assert await pending(r, stream) == {}


async def test_4_a_consumer_killed_mid_way_has_its_entries_claimed_by_another_none_lost(
    service: Start, redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("kill")
    ids = await add(r, stream, 200, sleep="0.05")
    common = ["--url", redis_url, "--stream", stream, "--claim-idle", "1.0"]
    a = service(MODULE, "a", *common, "--consumer", "a")
    await wait_until(lambda: len(handled(a)) >= 20, timeout=10)
    a.signal(signal.SIGKILL)
    a.wait()
    killed = time.monotonic()
    left = await pending(r, stream)
    assert left, "the killed consumer left entries pending"
    assert {p["consumer"] for p in left.values()} == {"a"}
    b = service(MODULE, "b", *common, "--consumer", "b")

    def all_handled() -> bool:
        by_b = {i for i, _, _ in handled(b)}
        # What a left pending, b runs, even what a ran but died before acking.
        return set(left) <= by_b and by_b | {i for i, _, _ in handled(a)} == set(ids)

    await wait_until(all_handled, timeout=15)
    b.signal(signal.SIGTERM)
    assert b.wait() == 0, b.output
    claimed = {i: (count, at) for i, count, at in handled(b) if i in left}
    assert set(claimed) == set(left)  # b ran every entry a had left
    assert {count for count, _ in claimed.values()} == {2}
    assert min(at for _, at in claimed.values()) - killed >= 1.0 - 0.3  # delivered before the kill
    # Claimed for free handlers only: maybe in several takes.
    takes = re.findall(r"consumer redis-stream claimed (\d+) entries pending over 1s", b.output)
    assert sum(map(int, takes)) == len(left), b.output
    assert await pending(r, stream) == {}
    assert await unread(r, stream) == 0


async def test_5_a_broker_outage_is_retried_with_growing_delays_and_a_sigterm_is_still_bounded(
    service: Start, private_redis: PrivateRedis
) -> None:
    r: Any = redis.asyncio.Redis.from_url(private_redis.url, decode_responses=True)
    stream = "orders"
    args = ["--url", private_redis.url, "--stream", stream, "--consumer", "c1"]
    args += ["--budget", "3", "--call-timeout", "1"]
    try:
        first = await add(r, stream, 5)
        svc = service(MODULE, "outage", *args)
        await wait_until(lambda: len(handled(svc)) == 5)
        private_redis.stop()
        await wait_for_line(svc, r"reconnecting in [\d.]+s \(attempt 4\)")
        delays = re.findall(r"lost redis://[^ ]+ \(.*\); reconnecting in ([\d.]+)s", svc.output)
        for attempt, delay in enumerate(map(float, delays[:4]), 1):
            step = 0.1 * 2 ** (attempt - 1)  # doubling, drawn from the upper half
            assert step / 2 - 0.01 <= delay <= step + 0.01, delays
        sent = svc.signal(signal.SIGTERM)
        assert svc.wait() == 0, svc.output
        assert svc.exit_time is not None
        assert svc.exit_time - sent < 1.0  # no broker to wait for: well inside the 3 s budget
        assert [i for i, _, _ in handled(svc)] == first

        # The broker comes back during the outage: it reconnects and resumes.
        private_redis.start()
        await r.connection_pool.disconnect()
        again = service(MODULE, "outage", *args)
        await wait_for_line(again, r"EVENT ready ")
        private_redis.stop()
        await wait_for_line(again, r"reconnecting in [\d.]+s \(attempt 2\)")
        private_redis.start()
        await wait_for_line(again, r"consumer redis-stream reconnected to redis://")
        await r.connection_pool.disconnect()  # the test's own connections died with the broker
        later = await add(r, stream, 5)
        await wait_until(lambda: [i for i, _, _ in handled(again)] == later)
        again.signal(signal.SIGTERM)
        assert again.wait() == 0, again.output
        assert await pending(r, stream) == {}
    finally:
        await r.aclose()


async def test_6_a_poison_entry_is_dead_lettered_after_max_deliveries_and_the_others_go_on(
    service: Start, redis_url: str, r: redis.asyncio.Redis, redis_key: Names
) -> None:
    stream = redis_key("poison")
    dead = f"{stream}:dead"
    good = await add(r, stream, 10)
    (poison,) = await add(r, stream, 1, poison="bad json")
    good += await add(r, stream, 10)
    args = ["--url", redis_url, "--stream", stream, "--consumer", "c1"]
    svc = service(MODULE, "poison", *args, "--max-deliveries", "3", "--dead-letter", dead)
    await wait_for_line(
        svc, re.escape(f"message {poison} dead-lettered to {dead} after 3 deliveries")
    )
    await wait_until(lambda: len(handled(svc)) == 20)
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    assert sorted(i for i, _, _ in handled(svc)) == sorted(good)
    tries = re.findall(rf"message {re.escape(poison)} failed \(delivery (\d) of 3\)", svc.output)
    assert tries == ["1", "2"]
    found: Any = await r.xrange(dead)
    ((_, fields),) = found
    assert fields["dead_letter.id"] == poison
    assert fields["dead_letter.error"] == "ValueError: poison bad json"
    assert fields["dead_letter.deliveries"] == "3"
    account = svc.report()["accounts"]["redis-stream"]
    assert (account["dead_lettered"], account["acked"], account["retried"]) == (1, 20, 2)
    assert await pending(r, stream) == {}
