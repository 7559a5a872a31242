"""Throughput and p99 of ``quiesce run --workers 2`` against gunicorn and uvicorn with 2 workers.

The same trivial ASGI app (``_workers_apps.py``'s ``pid``: its body is the
worker's pid) served three ways, each as a user types it (see
``_workers_apps.py`` for the exact command lines and why each one runs on
uvloop with httptools and no access log):

* ``quiesce run _workers_apps:pid --workers 2 --no-access-log``,
* ``gunicorn -w 2 -k uvicorn.workers.UvicornWorker`` (the class is
  deprecated in uvicorn 0.55; ``uvicorn-worker`` is not installed),
* ``uvicorn --workers 2 --no-access-log --loop uvloop --http httptools``.

All three run side by side; each gets an unmeasured warm-up once every worker
answered, then ``wrk -t1 -c50`` (loopback, its own 2 s bound per request)
measures them in rounds, one run of each kind a round, the first of each
round rotating, so that other work on the machine hits all three alike. The
pools are replaced every :data:`BLOCK` rounds.

Nothing is pinned: on this 2-core machine the 2 workers of the pool under
load and wrk share both cores (the idle pools cost nothing), which is what a
2-worker deployment on 2 cores looks like, and why the numbers are noisier
than ``http_throughput.py``'s pinned ones. Each run also prints the pool's CPU
per request (every process of it, from schedstat: that does not depend on wrk
getting a core) and how the requests' CPU split between its 2 workers
(wrk's 50 keep-alive connections are spread by whichever worker accepts
first, which can leave one worker with most of them).

Goals: quiesce's throughput >= 1.0x both, its p99 no higher.

Run: ``python bench/workers_throughput.py [rounds] [seconds] [--workers N]``
(default 12 rounds of 3 s, 2 workers: about 2.5 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import statistics
import subprocess
import time
from typing import NamedTuple

from _workers_apps import KINDS, Pool
from http_throughput import CONNECTIONS, WRK_TIMEOUT, load_average, read_wrk

#: Rounds per set of pools; each block starts all three afresh.
BLOCK = 4
WARMUP = 1
BASELINES = ("gunicorn", "uvicorn")


class Run(NamedTuple):
    """What one wrk run measured."""

    rps: float
    p99: float  # seconds
    errors: int  # non-2xx responses and socket errors
    cpu_per_request: float  # seconds of the pool's CPU (every process) per request
    split: float  # the busiest worker's share of the workers' CPU


def wrk(pool: Pool, seconds: int) -> Run:
    """One bounded, unpinned ``wrk`` run against ``pool``."""
    before = pool.cpu_ns()
    out = subprocess.run(
        [
            *("wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", WRK_TIMEOUT),
            *("--latency", f"http://127.0.0.1:{pool.port}/"),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    after = pool.cpu_ns()
    workers = set(pool.workers())
    spent = {p: ns - before.get(p, 0) for p, ns in after.items()}
    by_worker = [ns for p, ns in spent.items() if p in workers]
    got = read_wrk(out)
    if math.isnan(got.p99):
        raise RuntimeError(f"wrk made no request:\n{out}")
    return Run(
        got.rps,
        got.p99,
        got.errors,
        sum(spent.values()) / 1e9 / max(1, got.requests),
        max(by_worker, default=0) / max(1, sum(by_worker)),
    )


def show(run: Run) -> str:
    errors = f", {run.errors} errors" if run.errors else ""
    return (
        f"{run.rps:6.0f} req/s p99 {run.p99 * 1e3:5.2f} ms "
        f"cpu {run.cpu_per_request * 1e6:5.1f} us/req split {run.split:3.0%}{errors}"
    )


def main(rounds: int, seconds: int, workers: int) -> None:
    """Rounds of one wrk run per kind; ratios of quiesce against each baseline."""
    if shutil.which("wrk") is None:
        print("workers_throughput: skipped, needs wrk (apt-get install -y wrk)")
        return
    print(
        f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --timeout {WRK_TIMEOUT} --latency, unpinned; "
        f"{workers} workers each; {rounds} rounds, fresh pools every {BLOCK}; "
        f"load average {load_average()}"
    )
    runs: dict[str, list[Run]] = {kind: [] for kind in KINDS}
    for block in range(0, rounds, BLOCK):
        with contextlib.ExitStack() as stack:
            pools = {}
            for kind in KINDS:
                began = time.monotonic()
                pool = stack.enter_context(Pool(kind, workers))
                pool.wait_ready()
                pools[kind] = pool
                wrk(pool, WARMUP)
                print(f"  {kind}: all workers answered {time.monotonic() - began:.1f} s in")
            for number in range(block, min(block + BLOCK, rounds)):
                shift = number % len(KINDS)
                for kind in KINDS[shift:] + KINDS[:shift]:
                    runs[kind].append(wrk(pools[kind], seconds))
                line = " | ".join(f"{kind} {show(runs[kind][-1])}" for kind in KINDS)
                print(f"round {number + 1:2}: {line}")
    for kind, rs in runs.items():
        print(
            f"{kind:>9} median: {statistics.median(r.rps for r in rs):6.0f} req/s "
            f"p99 {statistics.median(r.p99 for r in rs) * 1e3:5.2f} ms "
            f"cpu {statistics.median(r.cpu_per_request for r in rs) * 1e6:5.1f} us/req "
            f"split {statistics.median(r.split for r in rs):3.0%}"
            f"{f', {sum(r.errors for r in rs)} errors' if any(r.errors for r in rs) else ''}"
        )
    ours = runs["quiesce"]
    for base in BASELINES:
        theirs = runs[base]
        pairs = list(zip(ours, theirs, strict=True))
        rps = statistics.median(a.rps / b.rps for a, b in pairs)
        p99 = statistics.median(a.p99 / b.p99 for a, b in pairs)
        cpu = statistics.median(a.cpu_per_request / b.cpu_per_request for a, b in pairs)
        of_medians = statistics.median(r.rps for r in ours) / statistics.median(
            r.rps for r in theirs
        )
        print(
            f"quiesce / {base}: throughput {rps:.3f} (median of round ratios; "
            f"{of_medians:.3f} of medians; goal >= 1.0), p99 {p99:.3f} (goal <= 1.0), "
            f"cpu/request {cpu:.3f}"
        )
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("rounds", nargs="?", type=int, default=12)
    parser.add_argument("seconds", nargs="?", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    main(args.rounds, args.seconds, args.workers)
