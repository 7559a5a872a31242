"""Lifecycle states, and how one step of a sequence is bounded, timed and recorded.

Every step of the start and the stop goes through :meth:`Sequence.step`: it
applies the step's timeout, times it, keeps its errors (never "last wins"),
logs one line on ``quiesce.lifecycle`` and appends a :class:`PhaseRecord` to
the report.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from quiesce.errors import QuiesceError, StartError, describe

__all__ = [
    "STEP_BACKSTOP",
    "Deadline",
    "Outcome",
    "PhaseRecord",
    "Sequence",
    "State",
    "StepObserver",
]

logger = logging.getLogger("quiesce.lifecycle")

#: How much longer a step's own timeout runs than the budget it is given. The step's
#: timeout is only a backstop: the bounds inside it (a server's stop timeout, a hook's,
#: the task phase's) get the budget and fire first, so a cut names the server, hook,
#: connection or task instead of the step.
STEP_BACKSTOP = 0.25


class State(enum.Enum):
    """Where an :class:`~quiesce.App` is in its life; transitions only move forward."""

    #: Built, options validated; nothing runs yet.
    CREATED = "created"
    #: Resources, hooks and servers are starting; a signal aborts the start.
    STARTING = "starting"
    #: Every server is bound and accepting; readiness is true.
    RUNNING = "running"
    #: The stop sequence runs; readiness is false, in-flight work finishes.
    STOPPING = "stopping"
    #: The stop sequence has ended; the report is final.
    STOPPED = "stopped"


class Outcome(enum.Enum):
    """How a step ended, from best to worst."""

    OK = "ok"
    #: Nothing to do, or not reached because an earlier failure or a force ended the sequence.
    SKIPPED = "skipped"
    ERROR = "error"
    TIMEOUT = "timeout"
    FORCED = "forced"

    @property
    def severity(self) -> int:
        """Rank used to keep the worst outcome of a step."""
        return _SEVERITY[self]


_SEVERITY = {
    Outcome.OK: 0,
    Outcome.SKIPPED: 0,
    Outcome.ERROR: 1,
    Outcome.TIMEOUT: 2,
    Outcome.FORCED: 3,
}


@dataclass
class PhaseRecord:
    """One step of a sequence, as the report shows it."""

    name: str
    #: Seconds from the beginning of the sequence to the beginning of this step.
    offset: float
    duration: float = 0.0
    outcome: Outcome = Outcome.OK
    #: What the step waited for (task names, servers, hooks).
    waited_for: list[str] = field(default_factory=list)
    #: What a timeout, the deadline or a second signal cut short.
    cut: list[str] = field(default_factory=list)
    #: One line per error, in the order they happened.
    errors: list[str] = field(default_factory=list)
    #: Why a step was skipped, or another short remark for the report.
    note: str = ""
    #: Seconds the step's inner bounds were given (its share of the start or stop budget);
    #: None for a step that was skipped or had no bound.
    budget: float | None = None
    #: The first exception the step kept, for callers that re-raise it.
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def mark(self, outcome: Outcome) -> None:
        """Record ``outcome`` unless the step already ended worse."""
        if outcome.severity > self.outcome.severity or self.outcome is Outcome.OK:
            self.outcome = outcome

    def error(self, what: str, exc: BaseException, *, log: bool = True) -> None:
        """Keep an error: one line in the report, its traceback in the log.

        ``log=False`` leaves the error line to the caller (a failed start
        prints one line of its own); the traceback then goes to DEBUG.
        """
        if log:
            logger.error("%s: %s", what, describe(exc), exc_info=exc)
        else:
            logger.debug("%s: %s", what, describe(exc), exc_info=exc)
        if self.exception is None:
            self.exception = exc
        self.errors.append(f"{what}: {describe(exc)}")
        self.mark(Outcome.ERROR)

    def timed_out(self, what: str) -> None:
        """Record that ``what`` was cut by a timeout."""
        self.cut.append(what)
        self.mark(Outcome.TIMEOUT)

    @property
    def ok(self) -> bool:
        """True when the step ended ``ok``."""
        return self.outcome is Outcome.OK

    def failure(self) -> str | None:
        """The one line saying why this step failed (an error or a timeout), or None.

        A part's own :class:`~quiesce.StartError` is its line as it stands.
        """
        if self.outcome not in (Outcome.ERROR, Outcome.TIMEOUT):
            return None
        if isinstance(self.exception, StartError):
            return str(self.exception)
        if self.errors:
            return f"{self.name}: {self.errors[0]}"
        return f"{self.name} timed out: {', '.join(self.cut)}"

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON-able data."""
        return {
            "name": self.name,
            "offset": round(self.offset, 4),
            "duration": round(self.duration, 4),
            "outcome": self.outcome.value,
            "waited_for": list(self.waited_for),
            "cut": list(self.cut),
            "errors": list(self.errors),
            "note": self.note,
            "budget": None if self.budget is None else round(self.budget, 4),
        }


class Deadline:
    """A point in monotonic time that several steps share."""

    def __init__(self, budget: float) -> None:
        self.at = time.monotonic() + budget

    def remaining(self, reserve: float = 0.0) -> float:
        """Seconds left before the deadline minus ``reserve``, never negative."""
        return max(0.0, self.at - reserve - time.monotonic())


class StepObserver(Protocol):
    """What watches the steps as they run (metrics, traces): see :mod:`quiesce.observe`."""

    def step_began(self, kind: str, step: str) -> None:
        """Step ``step`` of the ``kind`` sequence ("start" or "stop") begins."""
        ...

    def step_ended(self, kind: str, record: PhaseRecord) -> None:
        """A step ended (or was skipped); ``record`` is final."""
        ...


class Sequence:
    """The recorded steps of one start or stop sequence, each told to ``observer``."""

    def __init__(self, kind: str, observer: StepObserver | None = None) -> None:
        self.kind = kind
        self.observer = observer
        self.began = time.monotonic()
        self.records: list[PhaseRecord] = []
        #: The step running now, if any: what a last-resort report says it was waiting for.
        self.active: PhaseRecord | None = None

    @asynccontextmanager
    async def step(self, name: str, budget: float | None) -> AsyncIterator[PhaseRecord]:
        """Run the body as step ``name``, whose inner bounds get ``budget`` seconds.

        The step itself times out :data:`STEP_BACKSTOP` later (None: unbounded),
        as a backstop for a body that does not bound itself. A timeout marks the
        step ``timeout``; any other exception is kept as an error of the step and
        does not propagate, so the next step runs. Cancellation (the forced end)
        marks it ``forced`` and propagates.
        """
        began = time.monotonic()
        record = PhaseRecord(name, offset=began - self.began, budget=budget)
        self.active = record
        if self.observer is not None:
            self.observer.step_began(self.kind, name)
        try:
            async with asyncio.timeout(None if budget is None else budget + STEP_BACKSTOP):
                yield record
        except TimeoutError:
            record.mark(Outcome.TIMEOUT)
            if not record.cut:
                record.cut.append(f"{name} (timeout {budget:.3g}s)")
        except asyncio.CancelledError:
            record.mark(Outcome.FORCED)
            record.cut.append(f"{name} [interrupted]")
            raise
        except Exception as exc:
            record.error(name, exc, log=not isinstance(exc, QuiesceError))
        finally:
            record.duration = time.monotonic() - began
            self.active = None
            self.records.append(record)
            self.log(record)

    def failure(self) -> str | None:
        """The one line saying why the first failed step failed, or None."""
        return next((line for r in self.records if (line := r.failure()) is not None), None)

    def skip(self, name: str, why: str) -> PhaseRecord:
        """Record a step that was not run."""
        record = PhaseRecord(
            name, offset=time.monotonic() - self.began, outcome=Outcome.SKIPPED, note=why
        )
        self.records.append(record)
        self.log(record)
        return record

    def log(self, record: PhaseRecord) -> None:
        """Write the step's single structured log line; tell the observer it ended."""
        if self.observer is not None:
            self.observer.step_ended(self.kind, record)
        extra = f" note={record.note!r}" if record.note else ""
        if record.waited_for:
            extra += f" waited={len(record.waited_for)}"
        if record.cut:
            extra += " cut=" + ",".join(record.cut)
        level = logging.INFO if record.outcome in (Outcome.OK, Outcome.SKIPPED) else logging.WARNING
        logger.log(
            level,
            "%s phase=%s took=%.3fs outcome=%s%s",
            self.kind,
            record.name,
            record.duration,
            record.outcome.value,
            extra,
        )
