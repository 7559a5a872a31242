"""Periodic jobs (``App.every``): ``fn`` run at a fixed rate, as a tracked task, until the stop.

A job is registered with the app's :class:`~quiesce.tasks.TaskTracker`, which
starts it (once the app is ready, or at once when the app already runs) and
stops it between runs at the stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from quiesce.hooks import call
from quiesce.stacks import Site, where

if TYPE_CHECKING:
    from quiesce.tasks import TaskTracker

__all__ = ["PeriodicJob"]

logger = logging.getLogger("quiesce.lifecycle")


class PeriodicJob:
    """``fn`` run every ``seconds`` (fixed rate, missed ticks skipped) until the stop.

    At the stop a running iteration finishes; no new one starts. An iteration
    that raises is logged and the job goes on; the stop records the job as
    failed (``failures`` of ``runs``, with the last error).
    """

    def __init__(self, seconds: float, fn: Callable[[], Any], name: str, site: Site) -> None:
        self.seconds = seconds
        self.site = site
        self.fn = fn
        self.name = name
        self.runs = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, tracker: TaskTracker, stop: asyncio.Event) -> None:
        """Start the job's loop as a tracked task."""
        if self.task is None:
            loop = asyncio.get_running_loop()
            entry = (self.site, self._loop(stop))
            self.task = tracker._create(loop, entry, f"every {self.name}")

    async def _loop(self, stop: asyncio.Event) -> None:
        next_run = time.monotonic()
        while not stop.is_set():
            try:
                await call(self.fn)
            except Exception as exc:
                logger.exception(
                    "periodic job %s (declared at %s) failed", self.name, where(*self.site)
                )
                self.failures += 1
                self.last_error = exc
            self.runs += 1
            now = time.monotonic()
            next_run += self.seconds
            if next_run < now:  # overran: skip the missed ticks instead of bursting
                next_run = now + self.seconds - (now - next_run) % self.seconds
            try:
                async with asyncio.timeout(next_run - now):
                    await stop.wait()
            except TimeoutError:
                pass
