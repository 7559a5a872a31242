"""The supervisor's report: its own steps as any App's, and each worker's report under its pid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quiesce.report import Report

__all__ = ["SupervisorReport"]


@dataclass
class SupervisorReport(Report):
    """A :class:`~quiesce.Report` of the supervisor's steps, plus ``workers``.

    ``workers`` holds, by pid, the report of each worker the final stop
    stopped (its own JSON report), or what is known of one that wrote none
    (``{"exit": "killed by SIGKILL", "killed": true}``).
    """

    workers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data, the workers' reports included."""
        return {**super().as_dict(), "workers": dict(self.workers)}

    def to_text(self) -> str:
        """The supervisor's report, then a line per worker."""
        lines = [super().to_text()]
        for pid, report in self.workers.items():
            lines.append(f"  worker {pid}: {_worker_line(report)}")
        return "\n".join(lines)


def _worker_line(report: dict[str, Any]) -> str:
    if "stop" not in report:  # it wrote no report: what the supervisor saw of its end
        return str(report.get("exit", "no report")) + (", no report" if "exit" in report else "")
    stop = report.get("stop") or []
    took = stop[-1]["offset"] + stop[-1]["duration"] if stop else 0.0
    cut = [c for record in stop for c in record.get("cut", [])]
    line = f"exit {report['exit_code']}, stop took {took:.3f}s"
    if report.get("error"):
        line += f", error: {report['error']}"
    if cut:
        line += f", cut: {'; '.join(cut)}"
    return line
