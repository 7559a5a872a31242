"""Cost of ``app.spawn`` against bare ``asyncio.create_task`` (goal: ratio <= 1.5).

Each round creates N trivial tasks and waits for them all; the two kinds
alternate round by round in one process so that both see the same machine.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from quiesce import App

N = 50_000
ROUNDS = 7


async def noop() -> None:
    return None


async def bare_round() -> float:
    began = time.perf_counter()
    tasks = [asyncio.create_task(noop()) for _ in range(N)]
    await asyncio.gather(*tasks)
    return time.perf_counter() - began


async def spawn_round(app: App) -> float:
    began = time.perf_counter()
    tasks = [app.spawn(noop()) for _ in range(N)]
    await asyncio.gather(*tasks)
    return time.perf_counter() - began


async def main() -> None:
    app = App(name="bench")
    bare: list[float] = []
    spawned: list[float] = []

    async def measure() -> None:
        await app.ready
        for _ in range(ROUNDS):
            bare.append(await bare_round())
            spawned.append(await spawn_round(app))
        app.stop("bench done")

    bench = asyncio.create_task(measure())
    await app.serve()
    await bench
    b, s = statistics.median(bare), statistics.median(spawned)
    print(f"create_task: {b / N * 1e6:.2f} us/task (median of {ROUNDS} rounds of {N})")
    print(f"app.spawn:   {s / N * 1e6:.2f} us/task")
    print(f"ratio spawn/create_task: {s / b:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
