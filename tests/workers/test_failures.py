"""Workers that die, targets that cannot load, options that are wrong (issue 13, tests 3 and 4a)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.proc import Quiesce

from .apps import FAIL_IF
from .conftest import Pool
from .load import Load

Start = Callable[..., Pool]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_worker_killed_is_replaced_and_only_its_own_connections_fail(pool: Start) -> None:
    svc = pool(3)
    workers = svc.ready_workers(3)
    load = Load(svc.port, clients=50).start()
    try:
        load.wait_requests(3000, since=time.monotonic())
        serving = load.pids_since(time.monotonic() - 0.5)
        victim = next(pid for pid in workers if pid in serving)  # one that has connections
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        (line,) = svc.wait_log(rf"(worker {victim} killed by SIGKILL while serving.*)")
        (new,) = [int(p) for p in svc.wait_log(r"worker (\d+) ready \(\d of 3\)", count=4)][3:]
        load.wait_requests(3000, since=killed + 1.0)
    finally:
        samples = load.stop()
    assert "another starts in" in line
    assert new not in workers
    failed = [s for s in samples if not s.ok]
    # Only requests in flight on the victim's own connections, at most one per connection.
    assert all(s.pid == victim or (s.pid is None and s.opened < killed) for s in failed), failed
    assert len(failed) <= 50
    assert all(s.ok for s in samples if s.sent > killed + 1.0)
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.proc


def test_unimportable_target_exits_1_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import missing_dependency_of_the_app\n")
    began = time.monotonic()
    broken = Quiesce(["broken:app", "--workers", "4"], tmp_path / "broken", cwd=tmp_path)
    assert broken.wait() == 1, broken
    assert time.monotonic() - began < 5.0  # at once: no worker was started
    (line,) = lines(broken.stderr)
    assert "importing broken failed: ModuleNotFoundError" in line
    assert "Traceback" not in broken.stderr + broken.stdout


def test_bad_configuration_found_by_the_app_exits_2_with_one_line(pool: Start) -> None:
    svc = pool(2, "--drain-delay", "40")  # more than the default stop budget of 30 s
    assert svc.wait() == 2, svc.proc
    (line,) = lines(svc.log)
    assert line.startswith("quiesce: --drain-delay (flag): ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workers", "0"], "--workers (flag): '0': must be an integer from 1 to 256"),
        (["--workers", "2", "--reload-batch", "3"], "must not exceed --workers (2)"),
    ],
)
def test_bad_worker_options_exit_2_with_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    proc = Quiesce(["workers.apps:pid", *args], tmp_path / "bad", cwd=tmp_path)
    assert proc.wait() == 2, proc
    (line,) = lines(proc.stderr)
    assert says in line


def test_workers_that_never_start_stop_the_supervisor_with_exit_1(
    pool: Start, tmp_path: Path
) -> None:
    marker = tmp_path / "broken"
    marker.write_text("every start fails")
    svc = pool(2, env={FAIL_IF: str(marker)})
    assert svc.wait(30) == 1, svc.proc
    supervisor = [line for line in lines(svc.log) if "quiesce.lifecycle[" in line]
    failed = [line for line in lines(svc.log) if "start failed: workers failed to start" in line]
    assert len(failed) == 1, svc.log
    assert "3 worker starts failed in a row" in failed[0]
    assert "ASGI lifespan: the new code is broken" in failed[0]
    assert supervisor
    assert svc.report()["error"].startswith("3 worker starts failed in a row")
