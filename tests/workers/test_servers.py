"""Servers beside HTTP under a supervisor: gRPC's shared port, the admin server's one scrape."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import free_ports
from registry.conftest import Cluster

from .conftest import Pool

Start = Callable[..., Pool]


def test_grpc_port_zero_is_one_port_for_every_worker(pool: Start) -> None:
    svc = pool(2, "--grpc", "workers.apps:grpc_server", "--grpc-port", "0")
    svc.ready_workers(2)
    deadline = time.monotonic() + 10
    while len(re.findall(r"start ready .*grpc://", svc.log)) < 2:
        assert time.monotonic() < deadline, svc.proc
        time.sleep(0.02)
    ports = set(re.findall(r"start ready .*grpc://127\.0\.0\.1:(\d+)", svc.log))
    (port,) = ports  # the port the supervisor holds, the same in both workers
    for _ in range(4):  # new channels: new connections, to whichever worker
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.proc


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_one_scrape_covers_the_pool_and_dead_workers_are_folded(
    pool: Start, tmp_path: Path
) -> None:
    (admin,) = free_ports(1)
    folder = tmp_path / "metrics"
    svc = pool(2, "--admin-port", str(admin), env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    workers = svc.ready_workers(2)
    running = 'quiesce_lifecycle_state{state="running"}'
    assert scrape(admin)[running] == 2.0
    for round_ in range(1, 4):  # three workers killed and replaced
        os.kill(workers[0], signal.SIGKILL)
        workers = svc.ready_workers(2 + round_)[-2:]
        deadline = time.monotonic() + 10
        while scrape(admin)[running] != 2.0:
            assert time.monotonic() < deadline, svc.proc
            time.sleep(0.05)
    svc.signal(signal.SIGHUP)  # two clean stops of old workers: counted, then folded
    svc.wait_log(r"reload done")
    deadline = time.monotonic() + 10
    while scrape(admin).get('quiesce_stops_total{outcome="clean"}') != 2.0:
        assert time.monotonic() < deadline, scrape(admin)
        time.sleep(0.05)
    assert scrape(admin)[running] == 2.0
    # Five dead workers, yet only the live ones' files and the folded ones.
    pids = {int(p) for p in re.findall(r"_(\d+)\.db$", "\n".join(os.listdir(folder)), re.M)}
    assert len(pids) <= 2, sorted(os.listdir(folder))
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.proc


def test_the_supervisors_registration_is_in_the_pools_metrics(
    pool: Start, tmp_path: Path, etcd: Cluster
) -> None:
    (admin,) = free_ports(1)
    prefix = f"/quiesce-workers-metrics-{time.monotonic_ns()}"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    svc = pool(2, "--admin-port", str(admin), "--registry", etcd.url(prefix=prefix), env=env)
    svc.ready_workers(2)
    svc.wait_log(r"supervisor ready")

    def registered(expected: float) -> None:
        deadline = time.monotonic() + 10
        while scrape(admin).get("quiesce_registered") != expected:
            assert time.monotonic() < deadline, scrape(admin)
            time.sleep(0.05)

    registered(1.0)  # the workers register nothing: the supervisor told them
    svc.signal(signal.SIGHUP)  # new workers are told too, as they become ready
    svc.wait_log(r"reload done")
    new = svc.ready_workers(4)[-2:]
    deadline = time.monotonic() + 10
    while not all(f"_{pid}.db" in "".join(os.listdir(tmp_path / "metrics")) for pid in new):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    registered(1.0)
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.proc
