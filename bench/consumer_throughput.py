"""RedisStreamConsumer: throughput against a bare redis-py loop, and SIGTERM with work in flight.

(a) Entries/s: N entries wait in a stream; read them all through a new group with
    ``RedisStreamConsumer(concurrency=16)`` and with a bare redis.asyncio loop doing
    the same work (``XREADGROUP COUNT 16``, the 16 handlers at once, one ``XACK``
    for the 16). Kinds alternate round by round (which goes first too), each on a
    fresh stream. Goal: quiesce >= 0.95x bare. The client's CPU per entry is shown
    beside: entries/s move with Redis's other load on a shared machine, the
    client's own cost does not.
(b) SIGTERM -> exit of a consumer App with 16 handlers of 200 ms in flight (sent
    as the 16th starts; 48 more entries wait, never read). Goal: <= 200 ms + 50 ms.

Run: ``python bench/consumer_throughput.py [rounds] [entries]`` (default 3 rounds of
20,000) against the Redis at ``$REDIS_URL`` (``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio
from stoptime import ROOT, wait_exit

from quiesce import App
from quiesce.consumers.message import Message
from quiesce.consumers.redis_stream import Fields, RedisStreamConsumer

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CONCURRENCY = 16
WORK_MS = 200  # (b): each handler's work
BATCH = 1000  # entries added per pipeline
TIMEOUT = 120.0  # bound on any one run
GROUP = "bench"


async def work() -> None:
    """The handlers' work in (a): one pass through the loop, as an awaited I/O call would."""
    await asyncio.sleep(0)


async def fill(r: redis.asyncio.Redis, n: int) -> str:
    stream = f"bench_{uuid.uuid4().hex[:10]}"
    for start in range(0, n, BATCH):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + BATCH, n)):
                _ = pipe.xadd(stream, {"id": str(i), "payload": "x" * 64})
            await pipe.execute()
    return stream


async def through_quiesce(stream: str, n: int) -> float:
    done = asyncio.Event()
    handled = 0

    async def handle(message: Message[Fields]) -> None:
        nonlocal handled
        await work()
        handled += 1

    class Counted(RedisStreamConsumer):
        async def _ack(self, message: Message[Fields]) -> bool:
            acked = await super()._ack(message)
            if self.acked + 1 >= n:
                done.set()
            return acked

    consumer = Counted(
        handle, url=URL, stream=stream, group=GROUP, consumer="c1", concurrency=CONCURRENCY
    )
    began = time.perf_counter()
    await consumer.start()
    async with asyncio.timeout(TIMEOUT):
        await done.wait()
    took = time.perf_counter() - began
    await consumer.stop(5.0)
    assert handled == n, (handled, n)
    return n / took


async def through_bare(stream: str, n: int) -> float:
    handled = 0

    async def handle(fields: dict[str, str]) -> None:
        nonlocal handled
        await work()
        handled += 1

    began = time.perf_counter()
    r = redis.asyncio.Redis.from_url(URL, decode_responses=True)
    try:
        await r.xgroup_create(stream, GROUP, id="0")
        async with asyncio.timeout(TIMEOUT):
            while handled < n:
                streams: dict[Any, Any] = {stream: ">"}
                reply: Any = await r.xreadgroup(GROUP, "c1", streams, count=CONCURRENCY, block=1000)
                found = [(i, f) for _, entries in reply for i, f in entries]
                await asyncio.gather(*(handle(f) for _, f in found))
                await r.xack(stream, GROUP, *(i for i, _ in found))
        took = time.perf_counter() - began
    finally:
        await r.aclose()
    return n / took


async def throughput(rounds: int, n: int) -> None:
    print(f"(a) {n} entries through each, concurrency {CONCURRENCY}, {rounds} rounds")
    kinds: dict[str, Callable[[str, int], Awaitable[float]]] = {
        "quiesce": through_quiesce,
        "bare redis-py": through_bare,
    }
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    r = redis.asyncio.Redis.from_url(URL)
    try:
        for k in range(rounds):
            cells = []
            order = list(kinds.items())
            for kind, run in order if k % 2 == 0 else order[::-1]:  # neither always first
                stream = await fill(r, n)
                try:
                    began = time.process_time()
                    rates[kind].append(await run(stream, n))
                    cpu[kind].append((time.process_time() - began) / n * 1e6)
                finally:
                    await r.delete(stream)
                cells.append(f"{kind} {rates[kind][-1]:,.0f}/s {cpu[kind][-1]:.0f} us cpu/entry")
            ratio = rates["quiesce"][-1] / rates["bare redis-py"][-1]
            print(f"    round {k + 1}: {' | '.join(sorted(cells))} | ratio {ratio:.3f}")
    finally:
        await r.aclose()
    q, b = rates["quiesce"], rates["bare redis-py"]
    summary("entries/s", q, b, [x / y for x, y in zip(q, b, strict=True)])
    q, b = cpu["quiesce"], cpu["bare redis-py"]
    summary("us cpu/entry (ratio bare/quiesce)", q, b, [y / x for x, y in zip(q, b, strict=True)])


def summary(what: str, quiesce: list[float], bare: list[float], ratios: list[float]) -> None:
    middle = statistics.median
    print(
        f"    {what}: quiesce {middle(quiesce):,.0f}, bare {middle(bare):,.0f}, "
        f"ratio {middle(ratios):.3f} "
        f"(spread {min(ratios):.3f}..{max(ratios):.3f}; goal >= 0.95)"
    )


def serve(stream: str) -> None:
    """The consumer App of (b): prints ``started`` as each handler begins."""

    async def handle(message: Message[Fields]) -> None:
        sys.stdout.write("started\n")
        sys.stdout.flush()
        await asyncio.sleep(WORK_MS / 1000)

    app = App(name="bench", stop_timeout=5.0)
    consumer = RedisStreamConsumer(
        handle, url=URL, stream=stream, group=GROUP, consumer="c1", concurrency=CONCURRENCY
    )
    app.add_server(consumer)
    app.run()


def sigterm_served(stream: str) -> tuple[float, int]:
    """Serve ``stream`` in a subprocess; SIGTERM it as the 16th handler starts; time the exit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")]))
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", stream],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = threading.Timer(TIMEOUT, proc.kill)  # a silent service ends the readline too
    deadline.start()
    try:
        assert proc.stdout is not None
        for _ in range(CONCURRENCY):
            line = proc.stdout.readline()
            assert line == b"started\n", line
        signalled = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        exited = wait_exit(proc, 15.0)
        return exited - signalled, proc.wait(timeout=5)
    finally:
        deadline.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def sigterm_once(r: redis.asyncio.Redis) -> tuple[float, int, int, int]:
    """One (b) run: (seconds, exit code, entries left pending, entries never read)."""
    stream = await fill(r, CONCURRENCY * 4)
    try:
        seconds, code = await asyncio.to_thread(sigterm_served, stream)
        left = (await r.xpending(stream, GROUP))["pending"]
        (info,) = await r.xinfo_groups(stream)
        return seconds, code, int(left), int(info["lag"])
    finally:
        await r.delete(stream)


async def sigterm(rounds: int) -> None:
    print(f"(b) SIGTERM -> exit with {CONCURRENCY} handlers of {WORK_MS} ms in flight")
    took = []
    r = redis.asyncio.Redis.from_url(URL, decode_responses=True)
    try:
        for k in range(rounds):
            seconds, code, left, unread = await sigterm_once(r)
            took.append(seconds)
            print(
                f"    round {k + 1}: {seconds * 1000:.0f} ms, exit {code}, "
                f"{left} left pending, {unread} never read"
            )
    finally:
        await r.aclose()
    print(
        f"    median {statistics.median(took) * 1000:.0f} ms "
        f"(spread {min(took) * 1000:.0f}..{max(took) * 1000:.0f}; goal <= {WORK_MS + 50} ms)"
    )


async def main(rounds: int, n: int) -> None:
    await throughput(rounds, n)
    await sigterm(rounds)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    else:
        args = [int(a) for a in sys.argv[1:3]]
        asyncio.run(main(*(args + [3, 20_000][len(args) :])))
