"""``quiesce run --workers N`` stopped by real signals under real load (issue 13, tests 1 and 5)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from registry.conftest import Cluster

from .apps import BLOCKED_AT, SLOW_AT
from .conftest import Pool, etcd_history
from .load import Load

Start = Callable[..., Pool]


def test_sigterm_under_load_loses_no_request_and_deregisters_once(
    pool: Start, etcd: Cluster
) -> None:
    prefix = f"/quiesce-workers-{time.monotonic_ns()}"
    # The defaults: no --stop-timeout, no --drain-delay.
    svc = pool(4, "--registry", etcd.url(prefix=prefix))
    workers = svc.ready_workers(4)
    svc.wait_log(r"supervisor ready")
    load = Load(svc.port, clients=50).start()
    try:
        load.wait_requests(2000, since=time.monotonic())
        assert len(load.pids_since(0)) >= 2  # one accept queue, taken from by several
        sent = svc.signal(signal.SIGTERM)
        code = svc.wait()
        ended = time.monotonic()
    finally:
        samples = load.stop()
    assert code == 0, svc.proc
    assert ended - sent < 30.0  # the default budget, for the whole pool
    before = [s for s in samples if s.sent < sent]
    assert len(before) > 2000
    assert [s for s in before if not s.ok] == []
    # One instance for the pool: registered once, deregistered once, never per worker.
    changes = etcd_history(etcd.client_url, prefix)
    assert [kind for kind, _ in changes] == ["PUT", "DELETE"], changes
    steps = svc.stop_steps()
    assert steps["deregister"]["outcome"] == "ok"
    assert steps["stop_workers"]["outcome"] == "ok"
    assert sorted(int(pid) for pid in svc.report()["workers"]) == sorted(workers)


def test_worker_stuck_at_sigterm_is_killed_at_budget_and_margin_named_exit_3(
    pool: Start, tmp_path: Path
) -> None:
    marker = tmp_path / "blocked"
    svc = pool(2, "--stop-timeout", "2", env={BLOCKED_AT: str(marker)})
    workers = svc.ready_workers(2)
    # It never answers: its worker's loop is blocked.
    with httpx.Client(timeout=0.3) as client, contextlib.suppress(httpx.ReadTimeout):
        client.get(f"http://127.0.0.1:{svc.port}/block")
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, svc.proc
        time.sleep(0.02)
    stuck = int(marker.read_text())
    assert stuck in workers
    sent = svc.signal(signal.SIGTERM)
    code = svc.wait()
    took = time.monotonic() - sent
    assert code == 3, svc.proc
    assert 3.0 <= took < 5.0  # the budget (2 s) + the margin (1 s), then the kill
    report = svc.report()
    steps = svc.stop_steps()
    assert steps["stop_workers"]["outcome"] == "timeout"
    assert steps["kill"]["cut"] == [f"worker {stuck}: SIGKILLed at the budget 2s + 1s"]
    assert report["workers"][str(stuck)]["killed"] is True
    (other,) = set(workers) - {stuck}
    assert report["workers"][str(other)]["exit_code"] == 0
    assert f"worker {stuck}: killed by SIGKILL" in svc.log


def test_second_sigterm_forces_every_worker_at_once_exit_3(pool: Start, tmp_path: Path) -> None:
    marker = tmp_path / "slow"
    svc = pool(2, env={SLOW_AT: str(marker)})
    svc.ready_workers(2)
    load = Load(svc.port, clients=2, path="/slow").start()  # each request takes 5 s
    try:
        deadline = time.monotonic() + 10
        while not marker.exists() or len(marker.read_text().split()) < 2:
            assert time.monotonic() < deadline, svc.proc
            time.sleep(0.02)
        svc.signal(signal.SIGTERM)
        svc.wait_log(r"stop requested reason='signal SIGTERM' state=running", count=2)
        time.sleep(0.3)  # a second signal, not the first one repeated (within 0.1 s)
        forced = svc.signal(signal.SIGTERM)
        code = svc.wait()
        took = time.monotonic() - forced
    finally:
        load.stop()
    assert code == 3, svc.proc
    assert took < 2.0  # not the 5 s the requests wanted, nor the 30 s budget
    steps = svc.stop_steps()
    assert steps["stop_workers"]["outcome"] == "forced"
    assert "stop forced reason='signal SIGTERM'" in svc.log


def test_supervisor_killed_its_workers_stop_on_their_own(pool: Start) -> None:
    svc = pool(2)
    workers = svc.ready_workers(2)
    svc.proc.proc.kill()
    svc.proc.proc.wait(5)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, svc.log
        time.sleep(0.02)
    assert svc.log.count("reason='signal SIGTERM'") == 2  # each stopped itself, gracefully
