"""``quiesce drill`` with one instance: the demo passes; a service that cuts requests fails.

Real processes throughout: the drill as CI runs it, the service under ``quiesce
run`` or a ``--command``, a real SIGTERM, real sockets on loopback.
"""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

from cli.proc import environment
from drill.run import DEADLINE, ROOT, SHORT, drill, end, python_command

#: The demo's gRPC port is free of collisions at 0; its HTTP port is the drill's.
DEMO_ENV = {"SHOP_GRPC_PORT": "0", "SHOP_GATEWAY_PORT": "0"}


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
    assert not _running(marker)  # the sleeper was killed, not left behind


def test_drill_sigterm_ends_it_and_every_service_it_started() -> None:
    marker = f"interrupted-{uuid.uuid4().hex}"  # in the services' command lines only
    command = python_command("tests/drill/dies.py", "{port}", marker)
    argv = [sys.executable, "-m", "quiesce", "drill", "--command", command, "--instances", "2"]
    with subprocess.Popen(
        [*argv, "--duration", "30", "--signal-at", "20"],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            # The first progress line: the load is on, both instances serve.
            first = _line_within(proc.stderr, "drill +", DEADLINE)
            assert _running(marker)  # the instances it started
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=DEADLINE) == 128 + signal.SIGTERM, first
            rest = proc.stderr.read()
        finally:
            end(proc)  # after a failed assertion above: never leave its services behind
    assert "quiesce drill: interrupted (SIGTERM); every service it started was stopped" in rest
    assert "Traceback" not in rest
    assert not _running(marker)


def _line_within(stream: IO[str], prefix: str, timeout: float) -> str:
    """The first line of ``stream`` starting with ``prefix``, read within ``timeout``.

    select() sees only what the pipe holds, not the stream's buffer: fine for the drill's
    stderr in a log, whose first line is its first progress line.
    """
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([stream], [], [], left)
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r} within {timeout}s")


def _running(marker: str) -> bool:
    """Whether a process has ``marker`` in its command line (read whole, from /proc)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                return True
        except OSError:  # it ended while we looked
            continue
    return False


def test_drill_of_50_clients_loses_nothing_on_either_engine(engine: str) -> None:
    # The drill: 50 keep-alive clients, SIGTERM under load, the service's own
    # defaults but a 1 s drain (without one, requests already on their way to a closing
    # keep-alive connection are reset on either engine: measured 4-26 per stop).
    env = {"QUIESCE_ENGINE": engine, "QUIESCE_DRAIN_DELAY": "1", "QUIESCE_ACCESS_LOG": "false"}
    args = ["tests/drill/plain.py:app", "--json", "--duration", "4", "--signal-at", "1.5"]
    result = drill(*args, "--clients", "50", env=env)
    assert result.code == 0, result
    verdict = result.verdict
    before = verdict["windows"]["before"]
    assert before["sent"] > 0
    assert before["ok"] == before["sent"], verdict["problems"]
    (stop,) = verdict["stops"]
    assert stop["report"]["exit_code"] == 0
