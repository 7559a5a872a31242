"""Failed requests during a SIGHUP rolling reload under load: quiesce, gunicorn, uvicorn.

Each run starts a fresh pool of N workers (``_workers_apps.py``: the same
``pid`` app as ``quiesce run --workers N``, ``gunicorn -w N -k
uvicorn.workers.UvicornWorker`` and ``uvicorn --workers N``; all three
replace their workers on SIGHUP, uvicorn since 0.51, each new one ready
before an old one stops), waits until every worker has answered, and starts
50 keep-alive clients (``tests/workers/load.py``'s :class:`Load`: GET after
GET on one connection, a ``Connection: close`` answered is followed by a new
connection, nothing is retried: a request without its whole response is a
failure, and so is a refused or timed-out connect). Once they have had
:data:`WARM` answers the pool gets SIGHUP; the reload is done when quiesce
logs ``reload done`` (its old workers have exited then), or for the others
when none of the old worker pids is a child of the parent any more and N
workers are; the load goes on :data:`AFTER` s more, then stops and its
failures are counted, from the first request to the last. The kinds
alternate run by run, the first of each round rotating.

Printed per kind: the failures of each run, the runs with 0 failures, what
the failures were, and the reload's time. Goal: quiesce 0 in every run.

Run: ``python bench/workers_reload.py [runs] [--workers N] [--clients 50]``
(default 10 runs of each kind, 2 workers: about 3 minutes).
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import statistics
import sys
import time
from dataclasses import dataclass

from _workers_apps import KINDS, ROOT, Pool
from http_throughput import load_average

sys.path.insert(0, str(ROOT / "tests"))  # the worker tests' load, imported as they use it
from workers.load import Load

#: Answers the clients get before the SIGHUP: every one of them is running by then.
WARM = 500
#: How long the load goes on after the reload is done.
AFTER = 1.0
#: Bounds: the warm-up's answers, the reload.
WARM_TIMEOUT = 20.0
RELOAD_TIMEOUT = 60.0
DONE = re.compile(r"reload done|reload stopped.*")


@dataclass
class Result:
    """One run of one kind."""

    failures: int
    before_sighup: int  # of them, before the SIGHUP (a pool that was not serving yet)
    errors: collections.Counter[str]
    reload: float  # seconds from SIGHUP to done
    requests: int  # answered
    new_answered: int  # new workers that answered in the last AFTER seconds
    note: str = ""


def wait_reloaded(pool: Pool, old: set[int], mark: int, deadline: float) -> str:
    """Until the reload that began at log offset ``mark`` is done; returns a note, "" if clean."""
    while time.monotonic() < deadline:
        if pool.proc.poll() is not None:
            return f"exited {pool.proc.returncode} during the reload"
        current = set(pool.workers())
        if pool.kind == "quiesce":
            if found := DONE.search(pool.log, mark):
                left = old & current
                if found.group(0) != "reload done":
                    return found.group(0)
                return f"old workers {sorted(left)} still running at 'reload done'" if left else ""
        elif not old & current and len(current) == pool.count:
            return ""
        time.sleep(0.02)
    return f"reload not done within {RELOAD_TIMEOUT:.0f} s"


def run_once(kind: str, workers: int, clients: int) -> Result:
    """A fresh pool, its load, one SIGHUP; the load's failures, counted."""
    with Pool(kind, workers, log_level="info" if kind == "quiesce" else "warning") as pool:
        pool.wait_ready()
        old = set(pool.workers())
        load = Load(pool.port, clients=clients).start()
        try:
            load.wait_requests(WARM, since=0.0, timeout=WARM_TIMEOUT)
            mark = len(pool.log)
            sent = time.monotonic()
            pool.proc.send_signal(signal.SIGHUP)
            note = wait_reloaded(pool, old, mark, sent + RELOAD_TIMEOUT)
            done = time.monotonic()
            time.sleep(AFTER)  # the load's fixed tail after the reload, not a wait for anything
            new = load.pids_since(done) - old
        finally:
            samples = load.stop()
    failed = [s for s in samples if not s.ok]
    return Result(
        failures=len(failed),
        before_sighup=sum(1 for s in failed if s.sent < sent),
        errors=collections.Counter(s.error[:60] for s in failed),
        reload=done - sent,
        requests=len(samples) - len(failed),
        new_answered=len(new),
        note=note,
    )


def main(runs: int, workers: int, clients: int) -> None:
    """``runs`` rounds of one run per kind; the failures of each."""
    print(
        f"{workers} workers, {clients} keep-alive clients, SIGHUP after {WARM} answers, "
        f"load until {AFTER:.0f} s after the reload; {runs} runs per kind; "
        f"load average {load_average()}"
    )
    results: dict[str, list[Result]] = {kind: [] for kind in KINDS}
    for number in range(runs):
        shift = number % len(KINDS)
        parts = []
        for kind in KINDS[shift:] + KINDS[:shift]:
            r = run_once(kind, workers, clients)
            results[kind].append(r)
            early = f" ({r.before_sighup} before SIGHUP)" if r.before_sighup else ""
            note = f" [{r.note}]" if r.note else ""
            parts.append(
                f"{kind} {r.failures:3} failed{early} of {r.requests + r.failures:5}, "
                f"reload {r.reload:4.2f} s, {r.new_answered}/{workers} new answered{note}"
            )
        print(f"run {number + 1:2}: " + " | ".join(parts))
    for kind, rs in results.items():
        errors = sum((r.errors for r in rs), collections.Counter[str]())
        what = ", ".join(f"{name} {n}" for name, n in errors.most_common()) or "none"
        print(
            f"{kind:>9}: failures per run {[r.failures for r in rs]}, "
            f"{sum(1 for r in rs if r.failures == 0)} of {len(rs)} runs with 0; "
            f"reload {statistics.median(r.reload for r in rs):.2f} s median; failures: {what}"
        )
    clean = all(r.failures == 0 for r in results["quiesce"])
    print(f"goal (quiesce 0 failures in every run): {'met' if clean else 'NOT met'}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("runs", nargs="?", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    main(args.runs, args.workers, args.clients)
