"""Processes for the multiprocess metrics tests (PROMETHEUS_MULTIPROC_DIR set before they start).

``python -m observability.multiprocess_workers CASE REPORT_FILE ARGS...``:

- ``worker JOBS TASKS``: an App with an AdminServer on a free port that counts
  JOBS jobs (a counter and a histogram of its own), prints ``ADMIN <url>`` once
  running, and 0.5 s later (no lifecycle event then) starts TASKS tracked tasks
  held until the stop; SIGTERM stops it.
- ``churn DIR N FOLD``: a supervisor's stand-in that forks N short-lived workers
  one after the other (each runs the App's metrics through a start and a clean
  stop and counts a job), reaps each and folds it (``fold_dead``, FOLD=1) or only
  marks it dead as prometheus-client's own recipe does (FOLD=0); writes JSON
  with the directory's file count and the scrape time along the way.
- ``scrape DIR EXPECTED NAIVE``: scrapes DIR in a loop until the file DIR/../stop
  exists (30 s at most), and writes JSON: how many scrapes, how many saw ``jobs_total`` other
  than EXPECTED (or failed), and the retries; NAIVE=1 reads with
  prometheus-client's MultiProcessCollector instead of quiesce's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from quiesce import AdminServer, App, Lifecycle, PhaseRecord, State
from quiesce.metrics import Metrics
from quiesce.metrics_multiprocess import DirectoryCollector, fold_dead
from scenarios.events import say

#: Metrics of the test's own, written by every worker (a Counter's registry does not matter).
JOBS = Counter("jobs", "Jobs done.", registry=None)
LATENCY = Histogram("job_seconds", "How long a job took.", buckets=(0.1, 1.0), registry=None)


def worker(report: str, jobs: str, tasks: str) -> None:
    admin = AdminServer(port=0)
    app = App(name="pool", servers=[admin], stop_timeout=5.0, report_file=report)

    async def later() -> None:
        # After the start's last event: only the periodic write can tell the other workers.
        await asyncio.sleep(0.5)
        for n in range(int(tasks)):
            _ = app.spawn(app.stopping.wait(), name=f"held {n}")

    @app.after_start
    def started() -> None:
        for i in range(int(jobs)):
            JOBS.inc()
            LATENCY.observe(0.05 if i % 2 else 0.5)
        _ = app.spawn(later(), name="later")
        say(f"ADMIN {admin.endpoints()[0]} {os.getpid()}")

    app.run()


def one_worker() -> None:
    """A forked worker's life: its App's metrics through a clean start and stop, one job."""
    lifecycle = Lifecycle("churn")
    metrics = Metrics(lifecycle)
    for state, step in ((State.STARTING, "start_servers"), (State.RUNNING, None)):
        lifecycle.state = state
        metrics.state_changed(state)
        if step is not None:
            metrics.step_ended("start", PhaseRecord(name=step, offset=0.0, duration=0.01))
    JOBS.inc()
    LATENCY.observe(0.5)
    lifecycle.state = State.STOPPED
    metrics.state_changed(State.STOPPED)
    metrics.sequence_ended("stop", "clean")


def scrape_seconds(directory: str) -> float:
    registry = CollectorRegistry()
    registry.register(DirectoryCollector(directory))
    began = time.perf_counter()
    generate_latest(registry)
    return time.perf_counter() - began


def churn(report: str, directory: str, n: str, fold: str) -> None:
    files, times = [], []
    for i in range(1, int(n) + 1):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                one_worker()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        if fold == "1":
            fold_dead(directory, pid)
        else:
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # untyped upstream
        if i % 100 == 0:
            files.append(len(os.listdir(directory)))
            times.append(scrape_seconds(directory))
    registry = CollectorRegistry()
    registry.register(DirectoryCollector(directory))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    result = {
        "files": files,
        "scrape_seconds": times,
        "samples": [[*k, v] for k, v in samples.items()],
    }
    Path(report).write_text(json.dumps(result))


def scrape(report: str, directory: str, expected: str, naive: str) -> None:
    registry = CollectorRegistry()
    collector = DirectoryCollector(directory)
    if naive == "1":
        MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]  # untyped
    else:
        registry.register(collector)
    stop = Path(directory).parent / "stop"
    scrapes = wrong = gave_up = 0
    say("SCRAPING")
    deadline = time.monotonic() + 30  # the test may have died: never outlive it for long
    while not stop.exists() and time.monotonic() < deadline:
        scrapes += 1
        try:
            value = registry.get_sample_value("jobs_total")
        except FileNotFoundError:
            value = None
        except RuntimeError:  # ours, after a fold in each of its reads: an error, not a number
            gave_up += 1
            continue
        wrong += value != float(expected)
    result = {"scrapes": scrapes, "wrong": wrong, "retries": collector.retries, "gave_up": gave_up}
    Path(report).write_text(json.dumps(result))


def main() -> None:
    case, report, *args = sys.argv[1:]
    cases: dict[str, Callable[..., None]] = {"worker": worker, "churn": churn, "scrape": scrape}
    cases[case](report, *args)


if __name__ == "__main__":
    main()
