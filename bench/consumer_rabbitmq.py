"""RabbitMQConsumer: throughput against a bare aio-pika loop, and SIGTERM with work in flight.

(a) Messages/s: N persistent messages wait in a queue; consume them all with
    ``RabbitMQConsumer(concurrency=16)`` and with a bare aio-pika consumer doing
    the same work (prefetch 16, the handler, then ``ack``). Kinds alternate round
    by round (which goes first too), each on a fresh queue. Goal: quiesce >= 0.95x
    bare. The client's CPU per message is shown beside: messages/s moves with the
    broker's other load on a shared machine, the client's own cost does not.
(b) SIGTERM -> exit of a consumer App with 16 handlers of 200 ms in flight (sent
    as the 16th starts). Goal: <= 200 ms + 50 ms.

Run: ``python bench/consumer_rabbitmq.py [rounds] [messages]`` (default 3 rounds of
20,000) against the RabbitMQ at ``$AMQP_URL`` (``amqp://guest:guest@127.0.0.1:5672/``).
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

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from stoptime import ROOT, wait_exit

from quiesce import App
from quiesce.consumers import Message
from quiesce.consumers.rabbitmq import RabbitMQConsumer

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CONCURRENCY = 16
WORK_MS = 200  # (b): each handler's work
BATCH = 1000  # messages published per batch of confirms
TIMEOUT = 120.0  # bound on any one run


async def work() -> None:
    """The handlers' work in (a): one pass through the loop, as an awaited I/O call would."""
    await asyncio.sleep(0)


async def fill(channel: AbstractChannel, n: int) -> str:
    queue = f"bench_{uuid.uuid4().hex[:10]}"
    await channel.declare_queue(queue, durable=True)
    for start in range(0, n, BATCH):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        b"x" * 64,
                        message_id=str(i),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    queue,
                )
                for i in range(start, min(start + BATCH, n))
            )
        )
    return queue


async def through_quiesce(queue: str, n: int) -> float:
    done = asyncio.Event()
    handled = 0

    async def handle(message: Message[bytes]) -> None:
        nonlocal handled
        await work()
        handled += 1

    class Counted(RabbitMQConsumer):
        async def _ack(self, message: Message[bytes]) -> bool:
            acked = await super()._ack(message)
            if self.acked + 1 >= n:
                done.set()
            return acked

    consumer = Counted(handle, url=URL, queue=queue, concurrency=CONCURRENCY)
    began = time.perf_counter()
    await consumer.start()
    async with asyncio.timeout(TIMEOUT):
        await done.wait()
    took = time.perf_counter() - began
    await consumer.stop(5.0)
    assert handled == n, (handled, n)
    return n / took


async def through_bare(queue: str, n: int) -> float:
    done = asyncio.Event()
    acked = 0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal acked
        await work()
        await message.ack()
        acked += 1
        if acked == n:
            done.set()

    began = time.perf_counter()
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=CONCURRENCY)
        q = await channel.declare_queue(queue, durable=True)
        await q.consume(on_message)
        async with asyncio.timeout(TIMEOUT):
            await done.wait()
        took = time.perf_counter() - began
    finally:
        await connection.close()
    return n / took


async def throughput(rounds: int, n: int) -> None:
    print(f"(a) {n} messages through each, concurrency {CONCURRENCY}, {rounds} rounds")
    kinds: dict[str, Callable[[str, int], Awaitable[float]]] = {
        "quiesce": through_quiesce,
        "bare aio-pika": through_bare,
    }
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    # The client's CPU per message: the broker shares the machine, so messages/s move
    # with its other load; the client's own cost does not.
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        for r in range(rounds):
            cells = []
            order = list(kinds.items())
            for kind, run in order if r % 2 == 0 else order[::-1]:  # neither always first
                queue = await fill(channel, n)
                try:
                    began = time.process_time()
                    rates[kind].append(await run(queue, n))
                    cpu[kind].append((time.process_time() - began) / n * 1e6)
                finally:
                    await channel.queue_delete(queue)
                cells.append(f"{kind} {rates[kind][-1]:,.0f}/s {cpu[kind][-1]:.0f} us cpu/msg")
            ratio = rates["quiesce"][-1] / rates["bare aio-pika"][-1]
            print(
                f"    round {r + 1}: {' | '.join(sorted(cells, reverse=True))} | ratio {ratio:.3f}"
            )
    finally:
        await connection.close()
    q, b = rates["quiesce"], rates["bare aio-pika"]
    summary("messages/s", q, b, [x / y for x, y in zip(q, b, strict=True)])
    q, b = cpu["quiesce"], cpu["bare aio-pika"]
    summary("us cpu/msg (ratio bare/quiesce)", q, b, [y / x for x, y in zip(q, b, strict=True)])


def summary(what: str, quiesce: list[float], bare: list[float], ratios: list[float]) -> None:
    middle = statistics.median
    print(
        f"    {what}: quiesce {middle(quiesce):,.0f}, bare {middle(bare):,.0f}, "
        f"ratio {middle(ratios):.3f} "
        f"(spread {min(ratios):.3f}..{max(ratios):.3f}; goal >= 0.95)"
    )


def serve(queue: str) -> None:
    """The consumer App of (b): prints ``started`` as each handler begins."""

    async def handle(message: Message[bytes]) -> None:
        sys.stdout.write("started\n")
        sys.stdout.flush()
        await asyncio.sleep(WORK_MS / 1000)

    app = App(name="bench", stop_timeout=5.0)
    app.add_server(RabbitMQConsumer(handle, url=URL, queue=queue, concurrency=CONCURRENCY))
    app.run()


def sigterm_served(queue: str) -> tuple[float, int]:
    """Serve ``queue`` in a subprocess; SIGTERM it as the 16th handler starts; time the exit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")]))
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", queue],
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


async def sigterm_once(channel: AbstractChannel) -> tuple[float, int]:
    queue = await fill(channel, CONCURRENCY * 4)
    try:
        return await asyncio.to_thread(sigterm_served, queue)
    finally:
        await channel.queue_delete(queue)


async def sigterm(rounds: int) -> None:
    print(f"(b) SIGTERM -> exit with {CONCURRENCY} handlers of {WORK_MS} ms in flight")
    took = []
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        for r in range(rounds):
            seconds, code = await sigterm_once(channel)
            took.append(seconds)
            print(f"    round {r + 1}: {seconds * 1000:.0f} ms, exit {code}")
    finally:
        await connection.close()
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
