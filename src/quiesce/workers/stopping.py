"""How the supervisor's stop ends its workers: all at once, one budget, then the kills.

``stop_workers`` tells every worker the budget left (each stops as on
SIGTERM), waits for them until the budget + :data:`KILL_MARGIN`, and SIGKILLs
and names what is still running. A second signal (``forced``) ends the wait
at once: every worker gets SIGTERM again, which its App takes as the forced
end, and what is left is SIGKILLed :data:`FORCE_KILL_AFTER` later.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from quiesce.phases import Outcome
from quiesce.phases import Sequence as Steps
from quiesce.workers.child import REAP_TIMEOUT, Worker, exit_text

__all__ = [
    "FORCED_BUDGET",
    "FORCE_KILL_AFTER",
    "KILL_MARGIN",
    "Timings",
    "gather",
    "stop_workers",
    "unless_forced",
]

#: Past the stop budget, how long a worker still gets before it is SIGKILLed (its own App cuts
#: what it must at the budget: this is for a worker whose loop is blocked).
KILL_MARGIN = 1.0
#: After a second signal, how long the forced workers get before they are SIGKILLed (an App's
#: forced end takes at most 1 s, its watchdog's bound).
FORCE_KILL_AFTER = 1.5
#: The stop budget a worker gets when the stop is forced before it was told to stop.
FORCED_BUDGET = 0.01


@dataclass(frozen=True)
class Timings:
    """The supervisor's own bounds on its workers' ends."""

    kill_margin: float = KILL_MARGIN
    force_kill_after: float = FORCE_KILL_AFTER


async def stop_workers(
    seq: Steps,
    workers: list[Worker],
    left: Callable[[], float],
    forced: asyncio.Event,
    total: float,
    timings: Timings,
) -> None:
    """The ``stop_workers`` step, and the ``kill`` step when some did not stop in time.

    ``left()`` is what is left of the stop budget of ``total`` seconds.
    """
    stuck: list[Worker] = []
    async with seq.step("stop_workers", left() + timings.kill_margin) as rec:
        rec.waited_for.extend(f"worker {w.pid}" for w in workers)
        already = forced.is_set()
        for worker in workers:
            worker.stop(FORCED_BUDGET if already else left())
        if not already:
            await exits(workers, left() + timings.kill_margin, forced)
        if forced.is_set():
            rec.mark(Outcome.FORCED)
            for worker in workers:  # their App's second stop signal: the forced end
                if worker.running:
                    worker.signal(signal.SIGTERM)
            await exits(workers, timings.force_kill_after)
        stuck = [w for w in workers if w.running]
        for worker in stuck:
            rec.timed_out(f"worker {worker.pid} [still running]")
    if not stuck:
        return
    async with seq.step("kill", REAP_TIMEOUT) as rec:
        if forced.is_set():
            when = f"forced + {timings.force_kill_after:g}s"
        else:
            when = f"the budget {total:g}s + {timings.kill_margin:g}s"
        for worker in stuck:
            worker.kill()
            rec.cut.append(f"worker {worker.pid}: SIGKILLed at {when}")
        await asyncio.gather(*(w.wait(REAP_TIMEOUT) for w in stuck))
        rec.mark(Outcome.TIMEOUT)


async def exits(workers: list[Worker], timeout: float, forced: asyncio.Event | None = None) -> None:
    """Until every one of ``workers`` exited, ``timeout`` passed, or ``forced`` is set."""
    waits: set[asyncio.Future[Any]] = {w.exited for w in workers if w.running}
    force = asyncio.ensure_future(forced.wait()) if forced is not None else None
    if force is not None:
        waits.add(force)
    deadline = time.monotonic() + timeout
    try:
        while waits - {force} and (remaining := deadline - time.monotonic()) > 0:
            done, waits = await asyncio.wait(
                waits, timeout=remaining, return_when="FIRST_COMPLETED"
            )
            if force is not None and force in done:
                return
    finally:
        if force is not None:
            force.cancel()


async def unless_forced(work: Awaitable[object], timeout: float, forced: asyncio.Event) -> str:
    """Run ``work`` for up to ``timeout`` seconds: ``done``, ``timeout``, or ``forced``.

    Raises:
        Exception: what ``work`` raised (for the step to keep).

    """
    task = asyncio.ensure_future(work)
    force = asyncio.ensure_future(forced.wait())
    try:
        await asyncio.wait({task, force}, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        force.cancel()
    if task.done():
        task.result()
        return "done"
    task.cancel()
    await asyncio.wait({task}, timeout=REAP_TIMEOUT)
    return "forced" if forced.is_set() else "timeout"


def gather(workers: list[Worker], folder: str) -> dict[str, dict[str, Any]]:
    """Each worker's own report by pid, or what is known of its end when it wrote none."""
    reports: dict[str, dict[str, Any]] = {}
    for worker in workers:
        code = worker.proc.returncode
        found = None if worker.killed else worker.report(folder)
        if found is None:
            found = {"exit": exit_text(code), "exit_code": code, "killed": worker.killed}
        elif code != found.get("exit_code"):
            found["exit_code"] = code  # what the process did is what counts
        reports[str(worker.pid)] = found
    return reports
