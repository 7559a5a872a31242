"""The shutdown report: every step of the start and the stop, as text and as JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from quiesce.logqueue import write_within
from quiesce.phases import Outcome, PhaseRecord

__all__ = ["ExitCode", "Report"]

logger = logging.getLogger("quiesce.lifecycle")


class ExitCode:
    """The process exit codes of :meth:`quiesce.App.run`."""

    #: Stopped cleanly: nothing was cut.
    OK = 0
    #: Failed to start, or a server stopped serving on its own.
    FAILED = 1
    #: Bad configuration; nothing was started.
    CONFIG = 2
    #: The stop was incomplete: a timeout, the deadline or a second signal cut something.
    INCOMPLETE = 3


#: How an exit code says how the run ended (the report's verdict, ``quiesce_stops_total``).
_OUTCOMES = {
    ExitCode.OK: "clean",
    ExitCode.FAILED: "failed",
    ExitCode.CONFIG: "config",
    ExitCode.INCOMPLETE: "incomplete",
}


@dataclass
class Report:
    """What happened from the start to the end of one run of an app."""

    app: str
    id: str
    #: Why the stop began: ``signal SIGTERM``, ``stop(): <reason>``, ``server 'x' exited``...
    reason: str = ""
    #: The one-line error for a failed start, a crash or a bad configuration.
    error: str | None = None
    exit_code: int = ExitCode.OK
    start: list[PhaseRecord] = field(default_factory=list)
    stop: list[PhaseRecord] = field(default_factory=list)
    #: ``time.monotonic()`` when the stop began (phase offsets count from it); on one host
    #: the monotonic clock is shared, so other processes can line events up against it.
    stop_began: float | None = None
    #: Log records dropped because the log stream did not keep up (see :mod:`quiesce.logqueue`).
    log_records_dropped: int = 0
    #: Tracked tasks that raised during the run (each also an error of a step).
    tasks_failed: int = 0
    #: Observers (a trace exporter) whose final flush was cut: what they buffered is lost.
    observers_cut: list[str] = field(default_factory=list)
    #: What each accounting server (a consumer) did with the work it took, by server name:
    #: ``{"orders": {"fetched": 120, "acked": 118, "cut": ["1700-0", "1700-1"], ...}}``.
    accounts: dict[str, dict[str, int | list[str]]] = field(default_factory=dict)

    def step(self, name: str, *, of: str = "stop") -> PhaseRecord:
        """The record of step ``name`` of the stop (``of="start"``: of the start).

        Raises:
            KeyError: no such step ran (or was skipped) in that sequence.

        """
        for record in self.stop if of == "stop" else self.start:
            if record.name == name:
                return record
        raise KeyError(f"no {of} step {name!r} in the report")

    @property
    def cut(self) -> list[str]:
        """Everything the stop cut short, in order."""
        return [item for record in self.stop for item in record.cut]

    @property
    def stop_duration(self) -> float:
        """Seconds from the first to the end of the last stop step."""
        if not self.stop:
            return 0.0
        last = self.stop[-1]
        return last.offset + last.duration

    @property
    def outcome(self) -> str:
        """How the run ended, in a word: ``clean``, ``failed``, ``config`` or ``incomplete``."""
        return _OUTCOMES.get(self.exit_code, "?")

    async def show(self) -> None:
        """Log the report at INFO on ``quiesce.lifecycle``; with INFO off, write it to stderr.

        It is how the run ended: it reaches the terminal even when the host's
        logging is at WARNING. The write is bounded (1 s): a stalled stderr
        never holds the end of the run.
        """
        text = self.to_text()
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", text)
            return

        def write() -> None:
            print(text, file=sys.stderr, flush=True)

        await asyncio.to_thread(write_within, 1.0, write, "quiesce report")

    def incomplete(self) -> bool:
        """True when some stop step did not end ``ok`` (or ``skipped``)."""
        return any(r.outcome not in (Outcome.OK, Outcome.SKIPPED) for r in self.stop)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        return {
            "app": self.app,
            "id": self.id,
            "reason": self.reason,
            "error": self.error,
            "exit_code": self.exit_code,
            "start": [r.as_dict() for r in self.start],
            "stop": [r.as_dict() for r in self.stop],
            "stop_began": self.stop_began,
            "log_records_dropped": self.log_records_dropped,
            "observers_cut": list(self.observers_cut),
            "tasks_failed": self.tasks_failed,
            "accounts": {name: dict(account) for name, account in self.accounts.items()},
        }

    def to_json(self) -> str:
        """The report as one JSON document."""
        return json.dumps(self.as_dict(), indent=2)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path``, owner-only when created; a symlink is refused.

        Raises:
            OSError: the file cannot be written (ELOOP for a symlink).

        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.to_json())

    def to_text(self) -> str:
        """The report for humans: a line per step, then what each waited for and cut."""
        verdict = "bad configuration" if self.exit_code == ExitCode.CONFIG else self.outcome
        lines = [
            f"quiesce report: {self.app} ({self.id}) exit {self.exit_code} ({verdict})"
            + (f", stop after {self.reason}" if self.reason else "")
            + (f", stop took {self.stop_duration:.3f}s" if self.stop else "")
        ]
        # Said once: a step's own error line already carries it when that step failed.
        recorded = (e for r in (*self.start, *self.stop) for e in r.errors)
        if self.error and not any(e.endswith(self.error) for e in recorded):
            lines.append(f"  error: {self.error}")
        if self.log_records_dropped:
            lines.append(f"  log: {self.log_records_dropped} records dropped (the stream stalled)")
        if self.tasks_failed:
            lines.append(f"  tasks: {self.tasks_failed} tracked tasks failed")
        lines.extend(f"  telemetry: {line}" for line in self.observers_cut)
        lines.extend(f"  {name}: {_account_line(a)}" for name, a in self.accounts.items())
        for kind, records in (("start", self.start), ("stop", self.stop)):
            for r in records:
                timing = f"+{r.offset:7.3f}s {r.name:<13} {r.duration:7.3f}s"
                # What the step took of what it was given: each layer's use and budget.
                timing += f" of {r.budget:5.2f}s" if r.budget is not None else ""
                note = f" ({r.note})" if r.note else ""
                lines.append(f"  {kind:5} {timing} {r.outcome.value}{note}")
                if r.outcome is not Outcome.OK or r.cut:
                    lines.extend(f"      waited for: {w}" for w in r.waited_for)
                lines.extend(f"      cut: {c}" for c in r.cut)
                lines.extend(f"      error: {e}" for e in r.errors)
        return "\n".join(lines)


def _account_line(account: dict[str, int | list[str]]) -> str:
    """``fetched 12, acked 10, cut 2 (1700-0, 1700-1)``: counts as they are, lists by size."""
    parts = []
    for key, value in account.items():
        what = key.replace("_", " ")
        if isinstance(value, list):
            parts.append(f"{what} {len(value)}" + (f" ({', '.join(value)})" if value else ""))
        else:
            parts.append(f"{what} {value}")
    return ", ".join(parts)
