"""The drill's verdict: what the clients saw before, during and after the stop, and what it means.

Requests are counted in the window they were *sent* in: ``before`` the first
SIGTERM, ``during`` the stop (from the first SIGTERM until the last stopped
instance exited: with several instances, the whole rolling restart), and
``after`` it. The drill passes only when

- with one instance: no request sent before the signal failed (those were
  accepted by a serving service: losing one is a lost request);
- with several: no request failed at all (the others were there to take it);
- and every stop was clean: the process exited 0 after SIGTERM, in time,
  and its own stop report (when it writes one) says exit 0;
- and something was proven: at least one request before the signal was answered.

Everything else the clients saw is still counted and named (refusals after
a lone instance exited are what any client of it sees, and say so).
"""

from __future__ import annotations

import math
import signal
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quiesce.drill.load import OK, Sample

__all__ = ["BUCKET", "WINDOWS", "Stop", "Tally", "Verdict", "judge", "judge_stop"]

#: The windows requests are counted in, in order.
WINDOWS = ("before", "during", "after")
#: Seconds per bar of the timeline (the HTML chart's resolution).
BUCKET = 0.1
#: Failure kinds after the HTTP statuses, in the order they are shown.
_KIND_ORDER = ("refused", "reset", "timeout", "no instance", "other")


@dataclass
class Tally:
    """Requests of one window: sent, answered ok, failed by kind, retried."""

    sent: int = 0
    ok: int = 0
    retried: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    def add(self, sample: Sample) -> None:
        """Count one request."""
        self.sent += 1
        self.retried += sample.retried
        if sample.kind == OK:
            self.ok += 1
        else:
            self.failed[sample.kind] += 1

    @property
    def failures(self) -> int:
        """How many failed, of any kind."""
        return sum(self.failed.values())

    def describe(self) -> str:
        """The failures by kind, worst-known first: ``refused 30, reset 7``."""
        return ", ".join(f"{kind} {self.failed[kind]}" for kind in order_kinds(self.failed))

    def as_dict(self) -> dict[str, Any]:
        """The tally as JSON-able data."""
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failures,
            "by_kind": {kind: self.failed[kind] for kind in order_kinds(self.failed)},
            "retried": self.retried,
        }


def order_kinds(kinds: Iterable[str]) -> list[str]:
    """Failure kinds in display order: HTTP statuses by code, then the transport kinds."""
    kinds = set(kinds) - {OK}
    statuses = sorted(k for k in kinds if k.startswith("HTTP "))
    known = [k for k in _KIND_ORDER if k in kinds]
    return statuses + known + sorted(kinds - set(statuses) - set(known))


@dataclass(frozen=True)
class Stop:
    """What the drill saw of one instance's stop; times are ``time.monotonic()``."""

    label: str
    port: int
    #: When the drill sent SIGTERM (None: it exited on its own before).
    signalled: float | None
    exited: float | None
    exit_code: int | None
    #: It did not exit within the exit timeout and was killed.
    killed: bool = False
    #: Its own stop report (None: none; report_note says why).
    report: dict[str, Any] | None = None
    report_note: str = ""
    #: Its last lines of output, when it did not exit 0.
    output: Sequence[str] = ()


@dataclass
class Verdict:
    """The outcome of one drill; :meth:`as_dict` is what ``--json`` prints."""

    #: What ran: target or command, instances, clients, seconds, path, retries...
    settings: dict[str, Any]
    problems: list[str]
    notes: list[str]
    windows: dict[str, Tally]
    total: Tally
    stops: list[dict[str, Any]]
    #: The first error message of each failure kind.
    examples: dict[str, str]
    #: Requests per BUCKET seconds by kind: ``{"bucket": 0.1, "counts": {kind: [...]}}``.
    timeline: dict[str, Any]

    @property
    def passed(self) -> bool:
        """True when nothing the rules above forbid happened."""
        return not self.problems

    @property
    def exit_code(self) -> int:
        """0 when the drill passed, else 1."""
        return 0 if self.passed else 1

    def as_dict(self) -> dict[str, Any]:
        """The verdict as JSON-able data."""
        return {
            "passed": self.passed,
            "exit_code": self.exit_code,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "settings": dict(self.settings),
            "windows": {name: tally.as_dict() for name, tally in self.windows.items()},
            "total": self.total.as_dict(),
            "examples": dict(self.examples),
            "stops": list(self.stops),
            "timeline": self.timeline,
        }

    def to_text(self) -> str:
        """The verdict for people: the outcome, the problems, the windows, each stop."""
        s = self.settings
        lines = [f"quiesce drill: {'PASSED' if self.passed else 'FAILED'} (exit {self.exit_code})"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        retries = f"{s['retries']} retries" if s["retries"] else "no retries"
        lines.append(
            f"load: {s['clients']} clients, GET {s['path']} for {s['duration']:g}s, {retries}, "
            f"{s['instances']} instance{'s' if s['instances'] > 1 else ''}; "
            f"SIGTERM at +{s['signal_at']:g}s"
        )
        retried = " retried" if s["retries"] else ""
        lines.append(f"  {'window':<8}{'sent':>8}{'ok':>8}{'failed':>8}{retried}")
        for name, tally in (*self.windows.items(), ("total", self.total)):
            extra = f"{tally.retried:>8}" if s["retries"] else ""
            kinds = f"  {tally.describe()}" if tally.failed else ""
            lines.append(
                f"  {name:<8}{tally.sent:>8}{tally.ok:>8}{tally.failures:>8}{extra}{kinds}"
            )
        lines += [f"  e.g. {kind}: {text}" for kind, text in self.examples.items()]
        lines.append("stops:")
        lines += [f"  {_describe_stop(stop)}" for stop in self.stops]
        return "\n".join(lines)


def _describe_stop(stop: dict[str, Any]) -> str:
    head = f"{stop['instance']} (port {stop['port']}):"
    if stop["signalled"] is None:
        head += " never signalled"
    else:
        head += f" SIGTERM at +{stop['signalled']:.3f}s"
    if stop["exited"] is not None:
        head += f", exited {stop['exit_code']} at +{stop['exited']:.3f}s"
        if stop["signalled"] is not None:
            head += f" ({stop['exited'] - stop['signalled']:.3f}s later)"
    if stop["killed"]:
        head += ", killed"
    output = "".join(f"\n      output: {line}" for line in stop["output"])
    report = stop["report"]
    if report is None:
        return f"{head}; {stop['report_note']}{output}"
    phases = ", ".join(f"{p['name']} {p['duration']:.3f}s {p['outcome']}" for p in stop["phases"])
    cut = [c for record in report.get("stop", []) for c in record.get("cut", [])]
    cut_text = f"; cut: {', '.join(cut)}" if cut else ""
    return f"{head}; its report: exit {report.get('exit_code')}, stop: {phases}{cut_text}{output}"


def judge_stop(stop: Stop, *, exit_timeout: float, writes_report: bool) -> list[str]:
    """What was wrong with one instance's stop (nothing: a clean stop)."""
    label, code = stop.label, stop.exit_code
    if stop.signalled is None:
        return [f"{label} exited {code} on its own, before the drill signalled it"]
    problems = []
    if stop.killed:
        problems.append(
            f"{label} did not exit within {exit_timeout:g}s of SIGTERM (--exit-timeout): killed"
        )
    elif code is not None and code < 0:
        # uvicorn re-raises the signal after its own shutdown, a process without a handler
        # just dies of it: either way no exit code says whether the stop finished.
        problems.append(
            f"{label} did not exit after SIGTERM but died of {_signal_name(code)} (exit {code}): "
            "nothing says its stop finished"
        )
    elif code != 0:
        problems.append(f"{label} exited {code} after SIGTERM{_report_detail(stop)}")
    report = stop.report
    if report is not None and report.get("exit_code") != 0 and code == 0:
        problems.append(f"{label}: its stop report says exit {report.get('exit_code')}")
    if writes_report and report is None:
        problems.append(f"{label}: {stop.report_note}, so its stop cannot be shown clean")
    return problems


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _report_detail(stop: Stop) -> str:
    report = stop.report
    if report is None:
        return ""
    cut = [c for record in report.get("stop", []) for c in record.get("cut", [])]
    errors = [e for record in report.get("stop", []) for e in record.get("errors", [])]
    detail = [f"cut {c}" for c in cut] + [f"error {e}" for e in errors]
    return f" ({'; '.join(detail)})" if detail else ""


def stop_entry(stop: Stop, t0: float) -> dict[str, Any]:
    """One stop as JSON-able data, times in seconds from the start of the load."""

    def rel(at: float | None) -> float | None:
        return None if at is None else round(at - t0, 4)

    phases = []
    report = stop.report
    if report is not None:
        began = report.get("stop_began")
        # The report's stop_began is the service's time.monotonic(): on one host the
        # clock is shared, so its phases line up with the drill's own timeline.
        base = began - t0 if isinstance(began, int | float) else rel(stop.signalled)
        for record in report.get("stop", []):
            if base is None:
                break
            phases.append(
                {
                    "name": record.get("name"),
                    "start": round(base + float(record.get("offset", 0.0)), 4),
                    "duration": round(float(record.get("duration", 0.0)), 4),
                    "outcome": record.get("outcome"),
                }
            )
    return {
        "instance": stop.label,
        "port": stop.port,
        "signalled": rel(stop.signalled),
        "exited": rel(stop.exited),
        "exit_code": stop.exit_code,
        "killed": stop.killed,
        "report": report,
        "report_note": stop.report_note,
        "phases": phases,
        "output": list(stop.output),
    }


def judge(
    *,
    settings: dict[str, Any],
    samples: Sequence[Sample],
    examples: dict[str, str],
    stops: Sequence[Stop],
    t0: float,
    span: float,
    problems: Sequence[str],
    exit_timeout: float,
    writes_report: bool,
) -> Verdict:
    """Count the samples in their windows and apply the rules of the module docstring.

    Args:
        settings: what ran (shown and kept in the verdict).
        samples: every request of the load.
        examples: the first error message of each failure kind.
        stops: the instances the drill stopped (or that stopped on their own).
        t0: monotonic time the load began.
        span: seconds from t0 the timeline covers.
        problems: what already went wrong (a replacement that never became ready).
        exit_timeout: the bound each stop had (named when one was killed).
        writes_report: whether each instance was asked for a stop report.

    """
    several = settings["instances"] > 1
    signalled = [s.signalled - t0 for s in stops if s.signalled is not None]
    exited = [s.exited - t0 for s in stops if s.exited is not None and s.signalled is not None]
    first_signal = min(signalled, default=math.inf)
    last_exit = max(exited, default=first_signal)
    windows = {name: Tally() for name in WINDOWS}
    total = Tally()
    for sample in samples:
        window = (
            "before"
            if sample.sent < first_signal
            else "during"
            if sample.sent < last_exit
            else "after"
        )
        windows[window].add(sample)
        total.add(sample)
    found = list(problems)
    notes = []
    for stop in stops:
        found += judge_stop(stop, exit_timeout=exit_timeout, writes_report=writes_report)
    before = windows["before"]
    if before.ok == 0:
        found.append("no request sent before the signal was answered ok: nothing was proven")
    if several and total.failed:
        per_window = "; ".join(
            f"{name}: {tally.describe()}" for name, tally in windows.items() if tally.failed
        )
        found.append(f"{total.failures} of {total.sent} requests failed ({per_window})")
    elif before.failed:
        found.append(
            f"{before.failures} requests sent before the signal failed ({before.describe()})"
        )
    if not several:
        during, after = windows["during"], windows["after"]
        lost = Counter({k: n for k, n in during.failed.items() if k != "refused"})
        if lost:
            notes.append(
                f"during the stop, {sum(lost.values())} requests failed other than refused "
                f"({', '.join(f'{k} {n}' for k, n in sorted(lost.items()))}): "
                "a client without retries sees these"
            )
        if after.failed:
            notes.append(
                f"after the exit, {after.failures} requests failed ({after.describe()}): "
                "nothing serves any more; use --instances to drill a service with others"
            )
    return Verdict(
        settings=settings,
        problems=found,
        notes=notes,
        windows=windows,
        total=total,
        stops=[stop_entry(s, t0) for s in stops],
        # Only kinds that failed: a refusal retried into an answer is not one.
        examples={k: examples[k] for k in order_kinds(total.failed) if k in examples},
        timeline=timeline(samples, span),
    )


def timeline(samples: Sequence[Sample], span: float) -> dict[str, Any]:
    """Requests per BUCKET seconds by kind, from 0 to ``span`` (by the time each was sent)."""
    buckets = max(1, math.ceil(span / BUCKET))
    kinds = [OK, *order_kinds({s.kind for s in samples})]
    counts = {kind: [0] * buckets for kind in kinds}
    for sample in samples:
        counts[sample.kind][min(buckets - 1, int(sample.sent / BUCKET))] += 1
    return {"bucket": BUCKET, "span": round(span, 4), "kinds": kinds, "counts": counts}
