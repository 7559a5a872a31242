"""Cost of ``app.spawn`` against bare ``asyncio.create_task`` (goal: ratio <= 1.5).

Each round creates N trivial tasks and waits for them all; the two kinds
alternate round by round in one process so that both see the same machine.
A second pair of rounds has each task yield to the loop ``STEPS`` times: the
failure wrapper ``spawn`` puts around each coroutine is one more frame on
every step, and this shows what that costs a task that does some awaiting.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

from quiesce import App

N = 50_000
ROUNDS = 7
STEPS = 10


async def noop() -> None:
    return None


async def steps() -> None:
    for _ in range(STEPS):
        await asyncio.sleep(0)


async def timed(make: Callable[[], Coroutine[Any, Any, None]], start: Any, n: int) -> float:
    began = time.perf_counter()
    tasks = [start(make()) for _ in range(n)]
    await asyncio.gather(*tasks)
    return time.perf_counter() - began


async def main() -> None:
    app = App(name="bench")
    times: dict[str, list[float]] = {"bare": [], "spawn": [], "bare steps": [], "spawn steps": []}

    async def measure() -> None:
        await app.ready
        for _ in range(ROUNDS):
            times["bare"].append(await timed(noop, asyncio.create_task, N))
            times["spawn"].append(await timed(noop, app.spawn, N))
            times["bare steps"].append(await timed(steps, asyncio.create_task, N // 5))
            times["spawn steps"].append(await timed(steps, app.spawn, N // 5))
        app.stop("bench done")

    bench = asyncio.create_task(measure())
    await app.serve()
    await bench
    b, s = statistics.median(times["bare"]), statistics.median(times["spawn"])
    bs, ss = statistics.median(times["bare steps"]), statistics.median(times["spawn steps"])
    print(f"create_task: {b / N * 1e6:.2f} us/task (median of {ROUNDS} rounds of {N})")
    print(f"app.spawn:   {s / N * 1e6:.2f} us/task")
    print(f"ratio spawn/create_task: {s / b:.2f} (goal <= 1.5)")
    print(
        f"with {STEPS} steps a task: ratio {ss / bs:.2f} ({bs / (N // 5) * 1e6:.2f} us/task bare)"
    )


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
