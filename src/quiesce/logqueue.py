"""Log records reach their streams from a writer thread, through a bounded queue.

A log stream that stops moving (a collector that stalled, a container
runtime's blocking log driver, a pipe nobody reads) blocks every write to it.
Written from the event loop, the first full pipe would stop the service and
its stop. So the handlers of a :class:`LogQueue` run in one writer thread; the
loop only puts each record in a bounded queue, and when the queue is full the
record is dropped and counted, never waited for. Once the stream moves again
the writer says how many were dropped.

Formatting stays where the record is made (the standard library's
:class:`logging.handlers.QueueHandler`): the lines, their order and their
format are what the handlers would have written themselves.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FLUSH_TIMEOUT", "QUEUE_SIZE", "LogQueue", "current", "write_within"]

#: Records held while the stream does not move; beyond this they are dropped and counted.
#: About 100 kB of lines: a burst far beyond what a healthy stream ever lags behind.
QUEUE_SIZE = 1000
#: How long the end of a run waits for the queued records to reach their streams.
FLUSH_TIMEOUT = 1.0

_STOP = object()
_current: LogQueue | None = None


def current() -> LogQueue | None:
    """The log queue installed now, if any."""
    return _current


def write_within(timeout: float, write: Callable[[], object], name: str) -> bool:
    """Run ``write`` (to a stream that may not move) in a daemon thread; wait ``timeout``.

    Returns whether it finished. A write left blocked holds only its own thread,
    which the process may leave behind.
    """
    writer = threading.Thread(target=write, name=name, daemon=True)
    writer.start()
    writer.join(timeout)
    return not writer.is_alive()


class LogQueue:
    """Move ``logger``'s handlers behind a bounded queue and a writer thread.

    :meth:`install` puts one queue handler in their place; :meth:`close`
    flushes (bounded) and gives them back.
    """

    def __init__(self, logger: logging.Logger | None = None, *, size: int = QUEUE_SIZE) -> None:
        self.logger = logger or logging.getLogger()
        self._queue: queue.Queue[Any] = queue.Queue(size)
        self._handlers: list[logging.Handler] = []
        self._front = _DroppingHandler(self)
        self._lock = threading.Lock()
        self._dropped = 0
        self._unsaid = 0  # dropped, and not yet said by the writer
        self._writer: threading.Thread | None = None
        self._stop_sent = False

    @property
    def dropped(self) -> int:
        """Records dropped so far because the stream did not keep up."""
        return self._dropped

    def install(self) -> LogQueue:
        """Take over the logger's handlers; returns self."""
        global _current
        self._handlers = list(self.logger.handlers)
        for handler in self._handlers:
            self.logger.removeHandler(handler)
        self.logger.addHandler(self._front)
        self._writer = threading.Thread(target=self._write, name="quiesce log writer", daemon=True)
        self._writer.start()
        _current = self
        return self

    def close(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Write what is queued within ``timeout`` seconds, then give the handlers back.

        Returns False when the stream did not take it all in time: the writer
        thread (a daemon) then keeps the handlers, which are not given back
        (writing to them would block again); a later ``close()`` may try again.
        """
        global _current
        if _current is self:
            _current = None
        self.logger.removeHandler(self._front)
        writer = self._writer
        if writer is None:
            return True
        deadline = time.monotonic() + timeout
        if not self._stop_sent:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                return False
            self._stop_sent = True
        writer.join(max(0.0, deadline - time.monotonic()))
        if writer.is_alive():
            return False
        self._writer = None
        for handler in self._handlers:
            self.logger.addHandler(handler)
        return True

    def _drop(self) -> None:
        with self._lock:
            self._dropped += 1
            self._unsaid += 1

    def _write(self) -> None:
        while (record := self._queue.get()) is not _STOP:
            self._handle(record)
            with self._lock:
                unsaid, self._unsaid = self._unsaid, 0
            if unsaid:
                # The stream moves again (that write returned): say what it lost.
                note = logging.LogRecord(
                    "quiesce.lifecycle",
                    logging.WARNING,
                    __file__,
                    0,
                    "%d log records dropped: the log stream did not keep up",
                    (unsaid,),
                    None,
                )
                self._handle(self._front.prepare(note))

    def _handle(self, record: logging.LogRecord) -> None:
        for handler in self._handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


class _DroppingHandler(logging.handlers.QueueHandler):
    """A queue handler that drops (and counts) instead of waiting when the queue is full."""

    def __init__(self, owner: LogQueue) -> None:
        super().__init__(owner._queue)
        self._owner = owner

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._owner._drop()
