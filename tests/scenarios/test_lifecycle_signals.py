"""Lifecycle stories, each a real subprocess stopped by real signals (issue 2's list)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from conftest import Service, check_port_in_use_fails_start
from quiesce.signals import REPEAT_WINDOW

MODULE = "tests.scenarios.lifecycle"
Start = Callable[..., Service]


def started(service: Start, case: str, *args: str) -> Service:
    svc = service(MODULE, case, *args)
    svc.wait_for(r"EVENT ready ")
    return svc


def test_spawned_task_finishes_before_exit(service: Start) -> None:
    svc = started(service, "spawn_task")
    svc.wait_for("EVENT spawned")
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    names = [what for what, _ in svc.events()]
    assert "task-done" in names
    assert names.index("task-done") > names.index("stop-end main")
    tasks = svc.phase("tasks")
    assert tasks["outcome"] == "ok"
    assert any("send_receipt" in w for w in tasks["waited_for"])


def test_before_stop_hook_completes_and_stopping_wakes_waiters(service: Start) -> None:
    svc = started(service, "stopping_hook")
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    events = dict(svc.events())
    assert events["flush-end"] - events["flush-begin"] >= 1.4
    assert "saw-stopping" in events
    assert events["saw-stopping"] < events["flush-end"]
    assert svc.phase("before_stop")["outcome"] == "ok"


def test_hanging_hook_is_cut_and_later_hooks_still_run(service: Start) -> None:
    svc = started(service, "hanging_hook")
    sent = svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    events = dict(svc.events())
    assert "hook-third" in events, "the hook after the hung one must run"
    # hook_timeout is 0.5 s: the third hook runs after about that long, well before 3 s.
    assert 0.4 <= events["hook-third"] - sent < 3.0
    phase = svc.phase("before_stop")
    assert phase["outcome"] == "timeout"
    assert any("hangs_forever" in c for c in phase["cut"])


def test_second_signal_during_drain_forces_exit(service: Start) -> None:
    svc = started(service, "long_drain")
    first = svc.signal(signal.SIGTERM)
    svc.wait_for(r"stop phase=deregister")
    # A repeat within REPEAT_WINDOW is the same keypress forwarded twice; be clearly past it.
    time.sleep(max(0.0, first + REPEAT_WINDOW * 2 - time.monotonic()))
    second = svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - second < 0.5 + 0.5  # 0.5 s goal; margin for a loaded CI machine
    report = svc.report()
    drain = svc.phase("drain")
    assert drain["outcome"] == "forced"
    cut = [c for r in report["stop"] for c in r["cut"]]
    assert any("reconcile" in c for c in cut), cut
    assert any("server main" in c for c in cut), cut


def test_task_failure_is_in_the_report_when_a_force_ends_the_stop_before_the_tasks_phase(
    service: Start,
) -> None:
    svc = started(service, "failed_task_long_drain")
    svc.wait_for("tracked task 'charge_card'.* failed")
    first = svc.signal(signal.SIGTERM)
    svc.wait_for(r"stop phase=deregister")
    time.sleep(max(0.0, first + REPEAT_WINDOW * 2 - time.monotonic()))
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    forced = svc.phase("forced")
    assert any("charge_card" in e and "card declined" in e for e in forced["errors"]), forced


def test_failed_server_start_stops_the_other_and_names_the_culprit(service: Start) -> None:
    svc = service(MODULE, "one_fails")
    assert svc.wait() == 1, svc.output
    errors = [line for line in svc.lines if "ERROR" in line and "start failed" in line]
    assert len(errors) == 1, svc.output
    assert "server 'bad'" in errors[0]
    assert "cannot start on purpose" in errors[0]
    names = [what for what, _ in svc.events()]
    assert "start-end good" in names
    assert "stop-end good" in names
    assert "stop-begin bad" not in names


def test_port_in_use_fails_start_naming_server_and_port(service: Start) -> None:
    check_port_in_use_fails_start(service, MODULE, "port_in_use", "busy")


def test_dependency_cycle_exits_2_with_one_line_and_binds_nothing(service: Start) -> None:
    svc = service(MODULE, "cycle")
    assert svc.wait() == 2, svc.output
    assert svc.lines == [line for line in svc.lines if line.strip()]
    assert len(svc.lines) == 1, svc.output
    assert "dependency cycle: a -> b -> a" in svc.lines[0]
    assert svc.events() == []


def test_signal_during_slow_before_start_aborts_cleanly(service: Start) -> None:
    svc = service(MODULE, "slow_before_start")
    svc.wait_for("EVENT warm-up-begin")
    sent = svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - sent < 3.0
    names = [what for what, _ in svc.events()]
    assert "pool-closed" in names
    assert "warm-up-end" not in names
    assert not any(n.startswith("start-begin") for n in names)
    assert "Traceback" not in svc.output


def test_chain_starts_dependencies_first_and_stops_them_last(service: Start) -> None:
    svc = started(service, "chain")
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    starts = [w.split()[1] for w, _ in svc.events("start-end")]
    stops = [w.split()[1] for w, _ in svc.events("stop-begin")]
    # "main" is independent of the chain and may start or stop anywhere among them.
    assert [s for s in starts if s != "main"] == ["c", "b", "a"]
    assert [s for s in stops if s != "main"] == ["a", "b", "c"]
    events = dict(svc.events())
    assert events["stop-begin b"] >= events["stop-end a"]
    assert events["stop-begin c"] >= events["stop-end b"]


def test_independent_servers_stop_concurrently(service: Start) -> None:
    svc = started(service, "independent")
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    took = svc.phase("stop_servers")["duration"]
    # Two 1 s stops: about 1 s together, clearly less than the 2 s of a sequence.
    assert 0.95 <= took < 1.6


def test_periodic_job_finishes_its_run_and_starts_no_new_one(service: Start) -> None:
    svc = started(service, "periodic")
    svc.wait_for("EVENT run-begin 2")
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    names = [what for what, _ in svc.events("run-")]
    assert names[-2:] == ["run-begin 2", "run-end 2"], names
    assert "run-begin 3" not in names


def test_resources_close_in_reverse_after_after_stop(service: Start) -> None:
    svc = started(service, "resources")
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    names = [what for what, _ in svc.events()]
    opened = [n for n in names if n.startswith("open ")]
    assert opened == ["open db", "open cache", "open queue"]
    tail = names[names.index("after-stop") :]
    assert tail == ["after-stop", "close queue", "close cache", "close db"]
    assert "value db" in names


def test_task_ignoring_cancellation_is_named_and_exit_is_bounded(service: Start) -> None:
    svc = started(service, "stubborn_task")
    sent = svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - sent < 2.0 + 1.0
    assert "ignored-cancel" in dict(svc.events())
    tasks = svc.phase("tasks")
    assert tasks["outcome"] == "timeout"
    (cut,) = [c for c in tasks["cut"] if "stubborn" in c]
    assert "ignored cancellation" in cut
    assert "lifecycle.py:" in cut, "the report gives the task's stack"
    assert "in stubborn" in cut


def test_sigusr1_dumps_tasks_and_keeps_running(service: Start) -> None:
    svc = started(service, "spawn_task")
    svc.signal(signal.SIGUSR1)
    svc.wait_for(r"task dump: \d+ tasks")
    svc.wait_for(r"send_receipt")
    assert svc.proc.poll() is None
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output


def test_a_repeat_within_the_window_is_not_a_force(service: Start) -> None:
    svc = started(service, "spawn_task")
    svc.wait_for("EVENT spawned")
    svc.signal(signal.SIGTERM)
    svc.signal(signal.SIGTERM)  # what `timeout` or `uv run` does with one Ctrl+C
    assert svc.wait() == 0, svc.output
    assert "task-done" in dict(svc.events())


def test_second_signal_ends_the_process_even_when_the_loop_is_blocked(service: Start) -> None:
    svc = started(service, "blocked_loop")
    first = svc.signal(signal.SIGTERM)
    svc.wait_for("EVENT blocking")
    time.sleep(max(0.0, first + REPEAT_WINDOW * 2 - time.monotonic()))
    second = svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - second < 1.0 + 1.0  # the force watchdog fires after 1 s
    assert "the loop did not honour the forced stop" in svc.output
    assert "blocks_the_loop" in svc.output, "the stack dump shows where the loop is stuck"


def test_blocked_loop_cannot_outlive_the_stop_timeout(service: Start) -> None:
    svc = started(service, "blocked_loop")
    sent = svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    assert svc.exit_time is not None
    # stop_timeout 1 s + the watchdog's 2 s margin, with margin for a loaded machine.
    assert 2.5 < svc.exit_time - sent < 3.0 + 1.5
    assert "the stop overran stop_timeout=1s" in svc.output


def test_sighup_is_ignored_with_a_log_line_and_sigquit_dumps_the_tasks(service: Start) -> None:
    svc = started(service, "idle")
    svc.signal(signal.SIGHUP)
    svc.wait_for("SIGHUP ignored: the service keeps running")
    svc.signal(signal.SIGQUIT)
    svc.wait_for(r"task dump: \d+ tasks")
    assert svc.proc.poll() is None
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    assert svc.report()["reason"] == "signal SIGTERM"


@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("uncatchable", "signals: SIGKILL cannot be caught"),
        ("no_servers", "servers=None: must be a list of quiesce.Server objects"),
        ("unwritable_report", "the directory /nonexistent-quiesce-dir does not exist"),
    ],
)
def test_bad_option_under_run_is_exit_2_with_one_line(service: Start, case: str, line: str) -> None:
    svc = service(MODULE, case)
    assert svc.wait() == 2, svc.output
    assert len(svc.lines) == 1, svc.output
    assert line in svc.lines[0]
    assert svc.events() == []
