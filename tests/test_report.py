from __future__ import annotations

import json

import pytest

from quiesce import ExitCode, Outcome, PhaseRecord, Report


def make_report() -> Report:
    tasks = PhaseRecord("tasks", offset=1.0, duration=2.5, outcome=Outcome.TIMEOUT)
    tasks.waited_for = ["task 'export'"]
    tasks.cut = ["task 'export' spawned at app.py:10 [cancelled]"]
    hooks = PhaseRecord("before_stop", offset=0.0, duration=0.1)
    hooks.error("hook flush", ValueError("disk full"), log=False)
    skipped = PhaseRecord("deregister", offset=0.1, outcome=Outcome.SKIPPED, note="not registered")
    return Report(
        app="orders",
        id="i-1",
        reason="signal SIGTERM",
        exit_code=ExitCode.INCOMPLETE,
        stop=[hooks, skipped, tasks],
        stop_began=100.0,
    )


def test_text_names_every_step_and_what_it_cut() -> None:
    text = make_report().to_text()
    assert text.splitlines()[0] == (
        "quiesce report: orders (i-1) exit 3 (incomplete), stop after signal SIGTERM, "
        "stop took 3.500s"
    )
    assert "  stop  +  0.100s deregister      0.000s skipped (not registered)" in text
    assert "      cut: task 'export' spawned at app.py:10 [cancelled]" in text
    assert "      waited for: task 'export'" in text
    assert "      error: hook flush: ValueError: disk full" in text


def test_json_round_trips_and_lists_the_cuts() -> None:
    report = make_report()
    data = json.loads(report.to_json())
    assert data == report.as_dict()
    assert [r["outcome"] for r in data["stop"]] == ["error", "skipped", "timeout"]
    assert report.cut == ["task 'export' spawned at app.py:10 [cancelled]"]
    assert report.incomplete()


def test_worst_outcome_wins() -> None:
    record = PhaseRecord("x", offset=0.0)
    seen = []
    for outcome in (Outcome.TIMEOUT, Outcome.ERROR, Outcome.FORCED, Outcome.OK):
        record.mark(outcome)
        seen.append(record.outcome)
    assert seen == [Outcome.TIMEOUT, Outcome.TIMEOUT, Outcome.FORCED, Outcome.FORCED]


def test_text_says_a_failed_start_once() -> None:
    register = PhaseRecord("register", offset=0.0, duration=0.1)
    register.error("register", ConnectionRefusedError("etcd unreachable"), log=False)
    cause = "register: ConnectionRefusedError: etcd unreachable"
    assert register.errors == [cause]
    report = Report(app="orders", id="i-1", error="ConnectionRefusedError: etcd unreachable")
    report.start = [register]
    assert report.to_text().count("etcd unreachable") == 1
    report.start = []  # no step carries it: the header does
    assert report.to_text().count("etcd unreachable") == 1


def test_step_finds_a_step_by_name_or_says_which_is_missing() -> None:
    report = make_report()
    assert report.step("tasks").outcome is Outcome.TIMEOUT
    with pytest.raises(KeyError, match="no start step 'tasks'"):
        report.step("tasks", of="start")
