"""The consumer tests' one bounded poll: the counts and the broker's state are the events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["Check", "wait_until"]

Check = Callable[[], bool | Awaitable[bool]]


async def wait_until(check: Check, timeout: float = 10.0, period: float = 0.005) -> None:
    """Poll ``check`` (a function, or a coroutine function) until it is true, within ``timeout``.

    Raises:
        TimeoutError: ``check`` was still false after ``timeout`` seconds.

    """
    async with asyncio.timeout(timeout):
        while True:
            done = check()
            if done if isinstance(done, bool) else await done:
                return
            await asyncio.sleep(period)
