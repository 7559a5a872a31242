"""The rolling reload on SIGHUP: new workers ready first, then old ones stopped, a batch at a time.

For each batch of ``batch`` old workers: start as many new ones (they import
the code as it is now), wait until each is *ready* (every server of its App,
within ``start_timeout``), then stop that many old ones gracefully and wait
for their exit (killed at their ``stop_timeout`` + the margin). Capacity
never drops below N: an old worker stops only once its replacement serves.

A new worker that fails (it exits, or is not ready in time) is stopped, the
reason is logged in one line, the reload ends there and the old workers go
on serving. Before an old worker stops it drains briefly (``drain``,
:data:`RELOAD_DRAIN`): its responses say ``Connection: close`` so that its
keep-alive clients move to the other workers instead of meeting a closed
idle connection; its listener stays open meanwhile (the accept queue is
shared, so no connection waits on it alone).
"""

from __future__ import annotations

import asyncio
import logging
import time

from quiesce.workers.child import Worker, exit_text
from quiesce.workers.pool import Pool

__all__ = ["RELOAD_DRAIN", "reload"]

logger = logging.getLogger("quiesce.workers")

#: Seconds an old worker drains before its stop in a reload (its App's ``drain_delay`` is for
#: leaving the registry; in a reload the instance stays registered).
RELOAD_DRAIN = 0.5


async def reload(pool: Pool, *, batch: int, drain: float = RELOAD_DRAIN) -> bool:
    """Replace every worker started before now, ``batch`` at a time; True if all were.

    Cancelled (the supervisor stops), it leaves every worker to the stop.
    """
    pool.generation += 1
    generation = pool.generation
    began = time.monotonic()
    old_count = sum(1 for w in pool.live() if not w.stopping)
    logger.info("reload: replacing %d workers, %d at a time", old_count, batch)
    replaced: list[tuple[int, int]] = []
    while old := [w for w in pool.live() if w.generation < generation and not w.stopping]:
        group = old[:batch]
        started = await asyncio.gather(*(pool.add(candidate=True) for _ in group))
        new = [w for w in started if w is not None]
        whys = await asyncio.gather(*(pool.until_ready(w) for w in new))
        ready = [w for w, why in zip(new, whys, strict=True) if why is None]
        for worker in ready:
            worker.candidate = False  # one of the pool's from now on
        for worker, why in zip(new, whys, strict=True):
            if why is not None:
                logger.error(
                    "reload: new worker %d %s; the old workers keep serving", worker.pid, why
                )
        leaving = group[: len(ready)]
        codes = await asyncio.gather(*(_retire(pool, w, drain) for w in leaving))
        replaced += [(w.pid, n.pid) for w, n in zip(leaving, ready, strict=False)]
        for worker, code in zip(leaving, codes, strict=True):
            if code != 0:
                logger.warning("reload: old worker %d stopped with %s", worker.pid, exit_text(code))
        if len(ready) < len(group):
            logger.error(
                "reload stopped: %d of %d workers replaced; serving on with %d",
                len(replaced),
                old_count,
                pool.serving(),
            )
            return False
    pairs = ", ".join(f"{a}->{b}" for a, b in replaced) or "none"
    logger.info(
        "reload done: %d workers replaced in %.2fs (%s)",
        len(replaced),
        time.monotonic() - began,
        pairs,
    )
    return True


async def _retire(pool: Pool, worker: Worker, drain: float) -> int:
    return await worker.stop_within(pool.stop_timeout, pool.kill_margin, drain)
