"""``quiesce drill`` with one instance: the demo passes; a service that cuts requests fails.

Real processes throughout: the drill as CI runs it, the service under ``quiesce
run`` or a ``--command``, a real SIGTERM, real sockets on loopback.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

from drill.run import SHORT, drill, python_command

#: The demo's gRPC port is free of collisions at 0; its HTTP port is the drill's.
DEMO_ENV = {"SHOP_GRPC_PORT": "0"}


def test_drill_demo_passes_and_reports_its_stop() -> None:
    result = drill("examples/shop/main.py:app", "--path", "/orders", "--json", *SHORT, env=DEMO_ENV)
    assert result.code == 0, result
    verdict = result.verdict
    assert verdict["passed"] is True, verdict["problems"]
    assert verdict["problems"] == []
    before, during = verdict["windows"]["before"], verdict["windows"]["during"]
    assert before["sent"] > 0
    assert before["ok"] == before["sent"]
    assert during["ok"] > 0  # the demo serves on through its 2 s drain
    (stop,) = verdict["stops"]
    assert stop["exit_code"] == 0
    report = stop["report"]
    assert report is not None
    assert report["exit_code"] == 0
    assert report["reason"] == "signal SIGTERM"
    drain = next(p for p in stop["phases"] if p["name"] == "drain")
    assert drain["outcome"] == "ok"
    assert drain["duration"] >= 1.9  # the demo's drain_delay=2.0
    # The phases line up with the drill's clock: the drain begins after the signal.
    assert stop["signalled"] <= drain["start"] < stop["exited"]
    # The text verdict went to stderr, with the progress lines (not a terminal: one a second).
    assert "quiesce drill: PASSED (exit 0)" in result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("drill +")]
    assert 3 <= len(progress) <= 8, result.stderr
    assert "i0: stopping (SIGTERM sent)" in result.stderr


def test_drill_service_that_dies_with_requests_in_flight_fails_naming_them() -> None:
    # SIGTERM's default action: every request it was answering is cut.
    result = drill("--command", python_command("tests/drill/dies.py", "{port}"), *SHORT)
    assert result.code == 1, result
    assert "quiesce drill: FAILED (exit 1)" in result.stdout
    lost = re.search(
        r"problem: (\d+) requests sent before the signal failed \(reset", result.stdout
    )
    assert lost is not None, result
    assert int(lost.group(1)) >= 1
    assert "i0 did not exit after SIGTERM but died of SIGTERM (exit -15)" in result.stdout
    # A --command writes no report unless asked for one: the verdict says so.
    assert "no stop report: a --command service writes none" in result.stdout


def test_drill_command_report_placeholder_reads_its_report(
    drained_page: tuple[Path, dict[str, Any]],
) -> None:
    # A --command that runs an App writing its report to {report}: the drill reads it.
    _, verdict = drained_page
    assert verdict["passed"] is True
    (stop,) = verdict["stops"]
    assert stop["report"] is not None, stop
    assert stop["report"]["exit_code"] == 0
    assert [p["name"] for p in stop["phases"]][:3] == ["not_ready", "before_stop", "deregister"]


def test_drill_service_never_ready_ends_within_ready_timeout_in_one_line() -> None:
    marker = f"never-ready-{uuid.uuid4().hex}"  # finds this test's sleeper, nobody else's
    sleeper = python_command("-c", f"'import time; time.sleep(60)  # {marker}'", "{port}")
    result = drill("--command", sleeper, "--ready-timeout", "1", *SHORT)
    assert result.code == 1, result
    lines = [line for line in result.stderr.splitlines() if line.startswith("quiesce drill:")]
    assert len(lines) == 1, result
    assert "not ready within 1s (--ready-timeout)" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    # The sleeper was killed, not left behind.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert marker not in ps.stdout
