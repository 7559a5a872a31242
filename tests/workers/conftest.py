"""Fixtures of the worker tests: ``quiesce run --workers`` as a real process, its log, etcd."""

from __future__ import annotations

import base64
import json
import re
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.proc import Quiesce
from registry.conftest import Cluster

#: Bound on a pool's start (N interpreters importing uvicorn on a busy 2-core machine).
START = 30.0


class Pool:
    """``quiesce run workers.apps:<target> --workers N ...`` in a process of its own."""

    def __init__(self, proc: Quiesce, port: int, report: Path) -> None:
        self.proc = proc
        self.port = port
        self.report_path = report

    @property
    def log(self) -> str:
        """Everything it and its workers logged (stderr) so far."""
        return self.proc.stderr

    def wait_log(self, pattern: str, timeout: float = START, count: int = 1) -> list[str]:
        """Until ``count`` lines of the log match ``pattern``; returns the matches' first groups."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [m.group(m.lastindex or 0) for m in rx.finditer(self.log)]
            if len(found) >= count:
                return found
            if self.proc.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.proc.returncode}:\n{self.proc}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} lines matching {pattern!r}:\n{self.proc}")
            time.sleep(0.02)

    def ready_workers(self, count: int) -> list[int]:
        """Until ``count`` workers have said they are ready; their pids, in order."""
        return [int(p) for p in self.wait_log(r"worker (\d+) ready", count=count)]

    def signal(self, sig: int) -> float:
        """Send ``sig`` to the supervisor; the monotonic time it was sent."""
        sent = time.monotonic()
        self.proc.proc.send_signal(sig)
        return sent

    def wait(self, timeout: float = 20.0) -> int:
        """The supervisor's exit code, within ``timeout``."""
        return self.proc.proc.wait(timeout=timeout)

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.report_path.read_text())
        return data

    def stop_steps(self) -> dict[str, dict[str, Any]]:
        return {step["name"]: step for step in self.report()["stop"]}


@pytest.fixture
def pool(tmp_path: Path, free_port: int) -> Iterator[Callable[..., Pool]]:
    """Start pools: ``pool(workers, target="pid", *args, env=...)``; all are killed after."""
    started: list[Pool] = []

    def start(workers: int, *args: str, target: str = "pid", env: Any = None) -> Pool:
        report = tmp_path / f"report-{len(started)}.json"
        argv = [f"workers.apps:{target}", "--workers", str(workers), "--port", str(free_port)]
        argv += ["--report-json", str(report), "--no-access-log", *args]
        proc = Quiesce(argv, tmp_path / f"pool-{len(started)}", cwd=tmp_path, env=env)
        started.append(Pool(proc, free_port, report))
        return started[-1]

    yield start
    for each in started:
        # Its workers see their channel end and stop on their own (bounded by their budget).
        each.proc.kill()


@pytest.fixture(autouse=True)
def many_files() -> None:
    """50 clients and N workers' connections: more descriptors than a default soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A one-member etcd of this module's own (the registry tests' :class:`Cluster`)."""
    cluster = Cluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.close()


def etcd_history(client_url: str, prefix: str) -> list[tuple[str, str]]:
    """Every change under ``prefix`` since etcd began: ``("PUT" | "DELETE", key)``, in order."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    request = {
        "create_request": {
            "key": base64.b64encode(prefix.encode()).decode(),
            "range_end": base64.b64encode(end.encode()).decode(),
            "start_revision": "1",
        }
    }
    events: list[tuple[str, str]] = []
    timeout = httpx.Timeout(5.0, read=1.0)  # the watch stays open: a quiet second ends it
    try:
        with httpx.stream("POST", f"{client_url}/v3/watch", json=request, timeout=timeout) as r:
            for line in r.iter_lines():
                for event in json.loads(line).get("result", {}).get("events", []):
                    key = base64.b64decode(event["kv"]["key"]).decode()
                    events.append((event.get("type", "PUT"), key))
    except httpx.ReadTimeout:
        pass
    return events
