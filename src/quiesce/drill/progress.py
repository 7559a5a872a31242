"""The live progress line: requests a second, failures so far, what the service is doing.

On a terminal the line is rewritten in place (a carriage return) four times a second;
anywhere else (a CI log) a new line is written once a second, so that the log
shows the drill's course without a flood.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]

#: Seconds between two updates on a terminal, and between two lines elsewhere.
TTY_INTERVAL = 0.25
LOG_INTERVAL = 1.0


class Progress:
    """Writes the progress of a drill to ``stream`` until :meth:`close`.

    Args:
        stream: where to write (stderr).
        counts: returns ``(requests completed, requests failed)`` so far.
        phase: returns what the service is doing now (``serving``, ``i1: stopping``...).
        began: returns the monotonic time the load began (0 before it did).

    """

    def __init__(
        self,
        stream: TextIO,
        counts: Callable[[], tuple[int, int]],
        phase: Callable[[], str],
        began: Callable[[], float],
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._counts = counts
        self._phase = phase
        self._began = began
        self._task: asyncio.Task[None] | None = None
        self._width = 0

    def start(self) -> None:
        """Begin writing in the background."""
        self._task = asyncio.create_task(self._run(), name="quiesce drill progress")

    async def close(self) -> None:
        """Write the last state (the average rate) and stop; a terminal's line is ended.

        A drill that never began its load (the service was never ready) leaves no
        progress behind: its one line of error says it all.
        """
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.wait({self._task})
        began = self._began()
        if not began:
            if self.tty and self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
            return
        elapsed = time.monotonic() - began
        self._write(self._line(self._counts()[0] / elapsed if elapsed > 0 else 0.0))
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    async def _run(self) -> None:
        interval = TTY_INTERVAL if self.tty else LOG_INTERVAL
        last = self._counts()[0]
        while True:
            await asyncio.sleep(interval)
            done = self._counts()[0]
            # In a log, the start is not worth lines: it may still fail in one line.
            if self.tty or self._began():
                self._write(self._line((done - last) / interval))
            last = done

    def _line(self, rate: float) -> str:
        began = self._began()
        done, failed = self._counts()
        at = f"+{time.monotonic() - began:5.1f}s" if began else "  start"
        return f"drill {at}  {rate:6.0f} req/s  {done} requests, {failed} failed  {self._phase()}"

    def _write(self, line: str) -> None:
        if self.tty:
            # Padded over the previous line: a shorter one would leave its tail behind.
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
