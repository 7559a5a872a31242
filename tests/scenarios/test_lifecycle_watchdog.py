"""The last resorts, each a real subprocess: the watchdog's trace, a blocked start, late signals."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Service
from quiesce.signals import REPEAT_WINDOW

MODULE = "tests.scenarios.lifecycle"
Start = Callable[..., Service]


def started(service: Start, case: str) -> Service:
    svc = service(MODULE, case)
    svc.wait_for(r"EVENT ready ")
    return svc


def instance_files(svc: Service) -> list[Path]:
    return sorted((svc.report_path.parent / "registry").glob("*/*.json"))


def test_watchdog_of_a_blocked_loop_writes_the_report_and_names_where_and_what_is_left(
    service: Start,
) -> None:
    svc = started(service, "blocked_loop")
    assert len(instance_files(svc)) == 1
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    report = svc.report()
    assert report["exit_code"] == 3
    assert "the stop overran stop_timeout=1s (the loop is blocked at " in report["error"]
    assert "lifecycle.py:" in report["error"]
    assert "in blocks_the_loop" in report["error"]
    # The loop froze in the step that woke the task (app.stopping is set as the stop
    # begins): the watchdog closes that step as forced and adds its own.
    *_, frozen, last = report["stop"]
    assert frozen["outcome"] == "forced"
    assert frozen["cut"][-1] == f"{frozen['name']} [never ended]"
    assert last["name"] == "watchdog"
    assert last["outcome"] == "forced"
    # Frozen before the deregister step: the instance is left behind, and named.
    (left,) = last["cut"]
    assert "still in registry file://" in left
    assert "deregister could not run" in left
    assert len(instance_files(svc)) == 1


def test_watchdog_of_a_hook_swallowing_cancellation_says_the_loop_runs(service: Start) -> None:
    svc = started(service, "swallowing_hook")
    sent = svc.signal(signal.SIGTERM)
    svc.wait_for("EVENT hook-begin")
    assert svc.wait() == 3, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - sent < 1.0 + 2.0 + 1.5  # stop_timeout + the watchdog's margin
    report = svc.report()
    assert "the loop runs, but the step did not end" in report["error"]
    assert "blocked" not in report["error"]
    before_stop = report["stop"][-2]
    assert before_stop["name"] == "before_stop"
    assert any("refuses_to_stop" in w for w in before_stop["waited_for"])
    # The hook ran before deregistration: the instance is still registered, and named.
    (left,) = report["stop"][-1]["cut"]
    assert left.startswith(f"instance {report['id']} still in registry file://")
    assert "deregister could not run" in left
    assert len(instance_files(svc)) == 1
    assert "quiesce: the stop overran stop_timeout=1s" in svc.output


def test_start_blocked_in_a_sync_call_exits_1_at_start_timeout_with_its_stack(
    service: Start,
) -> None:
    svc = service(MODULE, "blocked_start")
    svc.wait_for("EVENT warm-up-begin")
    began = time.monotonic()
    svc.signal(signal.SIGTERM)  # the loop cannot see it: only the watchdog ends this
    assert svc.wait() == 1, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - began < 1.0 + 2.0 + 1.5  # start_timeout + the watchdog's margin
    report = svc.report()
    assert report["exit_code"] == 1
    assert "the start overran start_timeout=1s (the loop is blocked at " in report["error"]
    assert "in warm_up" in report["error"]
    assert [r["name"] for r in report["start"]][-2:] == ["before_start", "watchdog"]
    assert "in warm_up" in svc.output, "every thread's stack is dumped"


def test_second_signal_during_a_blocked_start_exits_1_within_a_second(service: Start) -> None:
    svc = service(MODULE, "blocked_start")
    svc.wait_for("EVENT warm-up-begin")
    first = svc.signal(signal.SIGTERM)
    time.sleep(REPEAT_WINDOW * 2)
    second = svc.signal(signal.SIGTERM)
    assert first < second
    assert svc.wait() == 1, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - second < 1.0 + 1.0
    assert "the loop did not honour the forced stop" in svc.output


def test_signal_after_the_report_keeps_the_reported_exit_code(service: Start) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        svc = started(service, "late_leftover")
        svc.signal(signal.SIGTERM)
        svc.wait_for("EVENT leftover-cancelled")  # after the report, before the exit
        svc.signal(sig)
        assert svc.wait() == 0, svc.output
        assert json.loads(svc.report_path.read_text())["exit_code"] == 0
        assert "Traceback" not in svc.output
        assert "KeyboardInterrupt" not in svc.output
