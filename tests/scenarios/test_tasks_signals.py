"""Tracked work under real signals: a subprocess per story (issue 7, item 12)."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Service

MODULE = "tests.scenarios.tasks_service"
Start = Callable[..., Service]


def spawn_line() -> int:
    """The line of the spawn call in the service: the site the log and report must name."""
    source = (Path(__file__).parent / "tasks_service.py").read_text().splitlines()
    (line,) = [n for n, text in enumerate(source, 1) if "the spawn site the report names" in text]
    return line


def test_failed_task_is_logged_at_once_and_the_stop_exits_incomplete(service: Start) -> None:
    svc = service(MODULE, "failing_task")
    svc.wait_for(r"EVENT ready ")
    svc.wait_for(r"EVENT spawned ")
    spawned = time.monotonic()
    site = f"tests/scenarios/tasks_service.py:{spawn_line()}"
    # Logged when it fails (0.1 s in), with its spawn site: before any signal is sent.
    svc.wait_for(
        re.escape(f"tracked task 'send_receipt' spawned at {site} failed: ")
        + "ValueError: receipt service said no",
        timeout=1.5,
    )
    svc.wait_for(r"^ValueError: receipt service said no$", timeout=1.0)  # the traceback's end
    logged_within = time.monotonic() - spawned
    assert re.search(r'tasks_service\.py", line \d+, in send_receipt', svc.output), svc.output
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output
    tasks = svc.phase("tasks")
    assert tasks["outcome"] == "error"
    assert tasks["errors"] == [
        f"task 'send_receipt' spawned at {site}: ValueError: receipt service said no"
    ]
    assert svc.report()["exit_code"] == 3
    tracebacks = [line for line in svc.lines if line == "ValueError: receipt service said no"]
    assert len(tracebacks) == 1, "logged once, when it failed; not again at the stop"
    assert logged_within < 1.5
