"""Shared fixtures: run scenario services as real subprocesses and talk to them with signals."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quiesce import Outcome, PhaseRecord

ROOT = Path(__file__).resolve().parent.parent

#: Real Redis, RabbitMQ and PostgreSQL for every test that asks (redis_url, amqp_url, postgres_dsn).
pytest_plugins = ("service_fixtures",)


class Service:
    """A scenario service in a subprocess; its output is read line by line as it comes.

    With ``stalled_stderr`` its stderr is a pipe of its own that nobody reads (a log
    collector that stopped reading): only stdout is read.
    """

    def __init__(
        self,
        module: str,
        args: list[str],
        report: Path,
        *,
        stalled_stderr: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.report_path = report
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        # tests/ too: scenario services share scenarios.events, as the tests import them.
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), str(ROOT / "tests")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, args[0], str(report), *args[1:]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stalled_stderr else subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.exit_time: float | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until a line matches ``pattern``; fail with the output so far if it never does."""
        rx = re.compile(pattern)
        for line in self.lines:
            if m := rx.search(line):
                return m
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                break
            self.lines.append(item)
            if m := rx.search(item):
                return m
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + self.output)

    def signal(self, sig: int = signal.SIGTERM) -> float:
        """Send ``sig``; returns the monotonic time it was sent."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        return sent

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the exit (bounded), read the rest of the output, return the exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("service did not exit in time; output:\n" + self.drain()) from None
        self.exit_time = time.monotonic()
        self.drain()
        return code

    def drain(self) -> str:
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return self.output

    def close(self) -> None:
        """Kill the service if it still runs and release its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def events(self, prefix: str = "") -> list[tuple[str, float]]:
        """The ``EVENT what time`` lines, in order, optionally only those starting with prefix."""
        found = []
        for line in self.lines:
            if line.startswith("EVENT ") and line[6:].startswith(prefix):
                what, _, at = line[6:].rpartition(" ")
                found.append((what, float(at)))
        return found

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.report_path.read_text())
        return data

    def phase(self, name: str) -> dict[str, Any]:
        for record in self.report()["stop"]:
            if record["name"] == name:
                found: dict[str, Any] = record
                return found
        raise AssertionError(f"no stop phase {name!r} in the report")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Any]:
    """Start scenario services; any still running at the end of the test are killed."""
    started: list[Service] = []

    def start(
        module: str, *args: str, stalled_stderr: bool = False, env: dict[str, str] | None = None
    ) -> Service:
        report = tmp_path / f"report-{len(started)}.json"
        svc = Service(module, list(args), report, stalled_stderr=stalled_stderr, env=env)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.close()


def check_port_in_use_fails_start(
    start: Callable[..., Service], module: str, case: str, server: str
) -> None:
    """Run ``case`` with its server on a port already taken: exit 1, one ERROR line, no traceback.

    The busy port is passed as the case's first argument after the report file.
    """
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        svc = start(module, case, str(port))
        assert svc.wait() == 1, svc.output
    errors = [line for line in svc.lines if "ERROR" in line]
    assert len(errors) == 1, svc.output
    assert f"server '{server}'" in errors[0]
    assert str(port) in errors[0]
    assert "Traceback" not in svc.output


def the_cut(record: PhaseRecord) -> str:
    """The one thing a timed-out step cut (the step must have timed out, cutting just one)."""
    assert record.outcome is Outcome.TIMEOUT, record
    (cut,) = record.cut
    return cut


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held together so that they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def free_port() -> int:
    """A free loopback port."""
    (port,) = free_ports(1)
    return port


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.slow`` tests unless QUIESCE_SLOW=1 (load tests stay out of CI time)."""
    if os.environ.get("QUIESCE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set QUIESCE_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


#: The HTTP engines every HTTPServer guarantee is tested on (issue 14: the same tests).
ENGINES = ("uvicorn", "granian")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each HTTP engine in turn: ``HTTPServer(..., engine=engine)``."""
    name: str = request.param
    return name


@pytest.fixture(params=ENGINES)
def service_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each HTTP engine in turn for the scenario services (``$QUIESCE_TEST_ENGINE``)."""
    name: str = request.param
    monkeypatch.setenv("QUIESCE_TEST_ENGINE", name)
    return name
