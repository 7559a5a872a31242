"""Following a service's instances for as long as a client runs: one watch loop for every user.

The discovery client's rotation and the gateway's channels both keep a list
equal to the registry's latest. A watch that fails is retried with jittered
backoff; meanwhile the user keeps its last list (instances rarely all go at
once, and a dead one is still retried around). The loop says once when the
watch starts failing and once when it works again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NoReturn

from quiesce.backoff import backoff_delay
from quiesce.registry import Discovery, Instance

__all__ = ["follow"]

logger = logging.getLogger("quiesce.registry")


async def follow(
    discovery: Discovery,
    service: str,
    update: Callable[[list[Instance]], None],
    *,
    who: str,
    failing: Callable[[BaseException | None], None],
    first: float,
    cap: float,
) -> NoReturn:
    """Call ``update`` with each list the watch of ``service`` gives, until cancelled.

    ``failing`` is told why the watch failed, and None once it works again;
    ``who`` names the follower in the two log lines. The backoff between tries
    grows from ``first`` to ``cap`` seconds.
    """
    failures = 0
    while True:
        try:
            async with discovery.watch(service) as watch:
                async for instances in watch:
                    if failures:
                        logger.warning("%s: watching works again", who)
                        failures = 0
                        failing(None)
                    update(instances)
            reason: BaseException = RuntimeError("the watch ended")
        except Exception as exc:
            reason = exc
        failures += 1
        failing(reason)
        if failures == 1:
            logger.warning("%s: watch failing, retrying: %r", who, reason)
        await asyncio.sleep(backoff_delay(failures, first=first, cap=cap))
