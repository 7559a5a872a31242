"""Scoped ownership of the stop signals: first one stops, second one forces, SIGUSR1 dumps.

Handlers are installed with :func:`signal.signal` rather than
``loop.add_signal_handler`` so that they run even while a misbehaving
callback blocks the loop; they only hand the event to the loop, thread-safe.
The previous handlers are restored on exit (trio's ``_signal_handler``), and
nothing is ever re-raised into the host (uvicorn's ``capture_signals`` does).
A process owner (``App.run()``) keeps them until the process exits instead:
a signal between the report and the exit must not turn the exit code the
report gave into a kill or a ``KeyboardInterrupt``.

Two more signals would kill the process with no stop at all: SIGHUP (a shell
hanging up on a service started from it) is ignored with a log line, and
SIGQUIT dumps the tasks like SIGUSR1, unless either is a stop signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any

from quiesce.tasks import describe_task

__all__ = ["SignalScope", "dump_tasks"]

logger = logging.getLogger("quiesce.lifecycle")

DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)
#: Dump the tasks too: Go's SIGQUIT habit, without dying.
QUIT_SIGNAL = getattr(signal, "SIGQUIT", None)
#: Ignored with a log line: the terminal's hang-up must not lose the work of a detached service.
HANGUP_SIGNAL = getattr(signal, "SIGHUP", None)
#: A stop signal repeated within this many seconds of the first is the same request, not a
#: force: wrappers such as ``timeout`` or ``uv run`` forward a Ctrl+C that the process group
#: already delivered, so one keypress arrives twice within microseconds.
REPEAT_WINDOW = 0.1


class SignalScope:
    """Own ``signals`` for the duration of a ``with`` block.

    ``on_stop(name)`` is called in the loop for the first stop signal and
    ``on_force(name)`` for every later one. ``on_force_signal()``, when given,
    runs right in the signal handler of a force (not in the loop, which may be
    blocked): the app arms its last-resort watchdog there. Outside the main
    thread nothing is installed: Python only delivers signals there.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        signals: Iterable[int],
        *,
        on_stop: Callable[[str], None],
        on_force: Callable[[str], None],
        on_force_signal: Callable[[], object] | None = None,
        until_exit: bool = False,
    ) -> None:
        self._loop = loop
        self._signals = list(dict.fromkeys(signals))
        self._on_stop = on_stop
        self._on_force = on_force
        self._on_force_signal = on_force_signal
        self._until_exit = until_exit
        self._seen = 0
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalScope:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread: stop signals are left to the host")
            return self
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        # An app that owns no stop signal (signals=()) leaves every signal to its host.
        if self._signals:
            extras = (
                (DUMP_SIGNAL, self._handle_dump),
                (QUIT_SIGNAL, self._handle_dump),
                (HANGUP_SIGNAL, self._handle_hangup),
            )
            for extra, handler in extras:
                if extra is not None and extra not in self._previous:
                    self._previous[extra] = signal.signal(extra, handler)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._until_exit:
            # The run is over and the process leaves soon (bounded): a late stop signal
            # has nothing left to stop, and the exit code stays the report's.
            for sig in self._signals:
                signal.signal(sig, _ignore_late)
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._seen == 1 and now - self._first_at < REPEAT_WINDOW:
            return
        self._seen += 1
        if self._seen == 1:
            self._first_at = now
        callback = self._on_stop if self._seen == 1 else self._on_force
        try:
            self._loop.call_soon_threadsafe(callback, name)
        except RuntimeError:  # the loop is closed: the run is over, nothing to stop
            return
        if self._seen > 1 and self._on_force_signal is not None:
            self._on_force_signal()

    def _handle_dump(self, signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to dump
            self._loop.call_soon_threadsafe(dump_tasks, self._loop)

    def _handle_hangup(self, signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to say it to
            self._loop.call_soon_threadsafe(
                logger.warning, "SIGHUP ignored: the service keeps running (stop it with SIGTERM)"
            )


def _ignore_late(signum: int, frame: FrameType | None) -> None:
    """A stop signal after the run: the process is already leaving with the report's code."""


def task_dump(loop: asyncio.AbstractEventLoop) -> str:
    """Every task of ``loop`` with its await chain, as text (call it in the loop's thread)."""
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    lines = [f"task dump: {len(tasks)} tasks (pid {os.getpid()})"]
    lines.extend("  " + describe_task(task) for task in tasks)
    return "\n".join(lines)


def dump_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """Log :func:`task_dump` (Go's SIGQUIT dump, without dying); returns it."""
    text = task_dump(loop)
    logger.warning("%s", text)
    return text
