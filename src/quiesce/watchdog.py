"""The last resort of a process owner: end a start or a stop that cannot end, and leave a trace.

The loop may be blocked (a synchronous call in a coroutine) or running but
stuck (a hook that swallows ``CancelledError``); either way no deadline of the
loop can fire, so a thread ends the process at the bound. Before it does, it
finds out which of the two it is (it pings the loop), where the loop's thread
is, writes the report so far with the step that never ended and what could not
be undone (an instance left in the registry), and only then exits. Its words
go to the log queue when one runs, else to stderr from a helper thread; either
way it waits for them a bounded time: a stalled log pipe cannot hold the exit.
(faulthandler is not used: it writes with the GIL held, so a full pipe would
freeze every thread, this one included.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

from quiesce import logqueue
from quiesce.phases import Outcome, PhaseRecord, Sequence
from quiesce.report import Report
from quiesce.stacks import frame_at

__all__ = ["LAST_WORDS_TIMEOUT", "PROBE_TIMEOUT", "Watchdog", "last_report"]

#: How long the loop gets to answer the watchdog's ping before it counts as blocked.
PROBE_TIMEOUT = 0.2
#: How long the exit waits for its last words to reach stderr (a full pipe must not hold it).
LAST_WORDS_TIMEOUT = 1.0

#: Called in the watchdog's thread with the cause line and the exit code; returns the report.
LastReport = Callable[[str, int], Report]

logger = logging.getLogger("quiesce.lifecycle")


class Watchdog:
    """Timers that end the process of the loop they were made in; the first to fire wins."""

    def __init__(self, last: LastReport, report_file: str | os.PathLike[str] | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._last = last
        self._report_file = report_file
        self._firing = threading.Lock()

    def arm(self, seconds: float, code: int, why: str) -> threading.Timer:
        """End the process with ``code`` after ``seconds`` unless the timer is cancelled first."""
        timer = threading.Timer(seconds, self._fire, (code, why))
        timer.daemon = True
        timer.start()
        return timer

    def _fire(self, code: int, why: str) -> None:
        if not self._firing.acquire(blocking=False):
            return  # another timer is already ending the process
        at = None if self._loop_answers() else self._where_the_loop_is()
        if at is not None:
            cause = f"{why} (the loop is blocked at {at})"
        else:
            cause = f"{why} (the loop runs, but the step did not end: it ignores cancellation)"
        report = self._last(cause, code)
        words = f"quiesce: {cause}; exiting {code}\n{report.to_text()}\n{_stacks()}"
        if self._report_file is not None:
            try:
                report.write(self._report_file)
            except OSError as exc:
                words += f"quiesce: cannot write the report to {self._report_file}: {exc}\n"
        logs = logqueue.current()
        if logs is not None:
            logger.critical("%s", words.rstrip("\n"))
            logs.close(LAST_WORDS_TIMEOUT)
        else:
            _say(words)
        os._exit(code)

    def _loop_answers(self) -> bool:
        answered = threading.Event()
        try:
            self._loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # closed: nothing runs there any more
            return False
        return answered.wait(PROBE_TIMEOUT)

    def _where_the_loop_is(self) -> str:
        frame = sys._current_frames().get(self._thread)
        if frame is None:
            return "an unknown place"
        return frame_at(frame)


def last_report(
    report: Report, steps: Sequence | None, *, cause: str, code: int, left_behind: list[str]
) -> Report:
    """A copy of ``report`` as the watchdog leaves it: the unfinished step, the cause, the code.

    The step that was running is added as ``forced``; a ``watchdog`` step
    names the cause and what was left behind. Safe to call from another
    thread while the loop is stuck: it only copies.
    """
    final = dataclasses.replace(
        report, start=list(report.start), stop=list(report.stop), error=cause, exit_code=code
    )
    if steps is None:
        return final
    records = final.stop if steps.kind == "stop" else final.start
    now = time.monotonic() - steps.began
    active = steps.active
    if active is not None:
        records.append(
            dataclasses.replace(
                active,
                duration=now - active.offset,
                outcome=Outcome.FORCED,
                waited_for=list(active.waited_for),
                cut=[*active.cut, f"{active.name} [never ended]"],
                errors=list(active.errors),
            )
        )
    records.append(
        PhaseRecord("watchdog", now, outcome=Outcome.FORCED, cut=list(left_behind), note=cause)
    )
    return final


def _say(words: str) -> None:
    """Write ``words`` to stderr's descriptor; wait at most LAST_WORDS_TIMEOUT for it."""

    def write() -> None:
        data = words.encode("utf-8", "replace")
        try:
            while data:  # os.write releases the GIL: only this thread waits on a full pipe
                data = data[os.write(2, data) :]
        except OSError:  # stderr closed or gone: the report file has it
            pass

    logqueue.write_within(LAST_WORDS_TIMEOUT, write, "quiesce last words")


def _stacks() -> str:
    """Every thread's stack, most recent call last (what faulthandler would print)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"Thread {names.get(ident, ident)!r} (most recent call last):\n{stack}")
    return "".join(parts)
