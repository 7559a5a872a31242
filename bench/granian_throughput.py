"""Throughput and p99: the trivial ASGI app on quiesce's granian engine, granian's CLI, uvicorn's.

Four servers of :func:`stop_targets.asgi_app`, all on uvloop, none with an
access log:

* ``quiesce-granian``: ``App(servers=[HTTPServer(app, engine="granian",
  access_log=False)]).run()``;
* ``granian-cli``: ``granian --interface asgi --loop uvloop --workers 1
  --no-access-log`` (it forks its worker: that child is the one measured);
* ``uvicorn-cli``: ``uvicorn --loop uvloop --http httptools --no-access-log``;
* ``quiesce-uvicorn``: ``HTTPServer(app, http="httptools", access_log=False)``.

As in ``http_throughput.py`` (whose ``wrk`` runner this reuses): the servers
are pinned to one core and ``wrk`` to the other, each server gets an
unmeasured warm-up, all four are replaced every :data:`BLOCK` rounds, and each
round runs every kind back to back, the order rotating by one kind a round so
that each kind runs first, second, third and last equally often. Each run
reports the CPU that other processes and the hypervisor took on the server's
core and on wrk's ("foreign"). Each ratio is judged on the median of its
round-by-round ratios over the rounds where neither of its two runs had more
than ``http_throughput.CLEAN_FOREIGN`` foreign (all rounds when fewer than
:data:`MIN_CLEAN` are); the ratio of the medians is printed too.
The server's CPU per request (schedstat, every thread) does not depend on wrk
getting its core.

Goals: quiesce-granian >= 0.95x the granian CLI and >= 1.4x the uvicorn CLI;
quiesce-uvicorn >= 0.98x the uvicorn CLI (``http_throughput.py``'s goal).
``granian-cli / uvicorn-cli`` is printed too: the most the 1.4x goal can get.

Run: ``python bench/granian_throughput.py [rounds] [seconds]`` (default 12
rounds of 2 s: about two minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from http_throughput import (
    CLEAN_FOREIGN,
    CONNECTIONS,
    LOAD_CPU,
    SERVER_CPU,
    WARMUP,
    WRK_TIMEOUT,
    Run,
    load_average,
    wrk,
)
from stoptime import serving

PY = sys.executable
TARGET = "bench/stop_targets.py"
KINDS = {
    "quiesce-granian": [PY, TARGET, "quiesce-granian"],
    "granian-cli": [PY, TARGET, "granian-cli"],
    "uvicorn-cli": [PY, TARGET, "uvicorn-cli"],
    "quiesce-uvicorn": [PY, TARGET, "quiesce-http"],
}
#: Kinds whose process forks the one that serves (measured instead of the parent).
FORKS = {"granian-cli"}
#: (kind, baseline, goal for kind / baseline throughput; None: printed for context).
RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("quiesce-granian", "granian-cli", 0.95),
    ("quiesce-granian", "uvicorn-cli", 1.4),
    ("quiesce-uvicorn", "uvicorn-cli", 0.98),
    ("granian-cli", "uvicorn-cli", None),
)
#: Rounds per set of server processes; each block starts all four afresh.
BLOCK = 4
#: Clean rounds (neither run's foreign share over CLEAN_FOREIGN) a verdict needs; else all count.
MIN_CLEAN = 3
#: How long a forking server may take to show its child once it listens.
CHILD_TIMEOUT = 5.0


def worker_pid(pid: int) -> int:
    """The one child of ``pid`` (granian's worker), waited for with a bound."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        found = children.read_text().split()
        if len(found) == 1:
            return int(found[0])
        if len(found) > 1:
            raise RuntimeError(f"process {pid} has {len(found)} children, expected its one worker")
        time.sleep(0.01)
    raise RuntimeError(f"process {pid} shows no worker after {CHILD_TIMEOUT}s")


def kill_at_exit(stack: contextlib.ExitStack, pid: int) -> None:
    """SIGKILL ``pid`` when ``stack`` closes, through a pidfd (never a reused pid).

    ``serving()`` kills only the process it started: granian's worker would
    outlive its parent's SIGKILL, orphaned and still serving.
    """
    fd = os.pidfd_open(pid)

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):  # it had exited and been reaped
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)

    stack.callback(kill)


def foreign(run: Run) -> float:
    """The larger share of the server's core or wrk's that other processes took."""
    return max(run.foreign, run.foreign_load)


def cell(run: Run) -> str:
    errors = f" {run.errors} errors" if run.errors else ""
    return (
        f"{run.rps:6.0f}/s p99 {run.p99 * 1e3:5.2f}ms {run.cpu_per_request * 1e6:4.1f}us "
        f"f{foreign(run):3.0%}{errors}"
    )


def rounds_ratio(rounds: Sequence[dict[str, Run]], kind: str, base: str) -> str:
    """Median over ``rounds`` of each round's kind / base: throughput, p99, CPU per request."""
    rps = statistics.median(r[kind].rps / r[base].rps for r in rounds)
    p99 = statistics.median(r[kind].p99 / r[base].p99 for r in rounds)
    cpu = statistics.median(r[kind].cpu_per_request / r[base].cpu_per_request for r in rounds)
    return f"throughput {rps:.3f}, p99 {p99:.3f}, cpu/request {cpu:.3f}"


def run_rounds(count: int, seconds: int) -> list[dict[str, Run]]:
    """Every kind once a round, the order rotating; fresh processes every :data:`BLOCK`."""
    names = list(KINDS)
    rounds: list[dict[str, Run]] = []
    for block in range(0, count, BLOCK):
        with contextlib.ExitStack() as stack:
            servers: dict[str, tuple[int, int]] = {}  # kind: (port, pid measured)
            for name, command in KINDS.items():
                proc, port = stack.enter_context(serving(command, cpus=str(SERVER_CPU)))
                pid = proc.pid
                if name in FORKS:
                    pid = worker_pid(proc.pid)
                    kill_at_exit(stack, pid)  # before serving() kills its parent
                servers[name] = port, pid
                wrk(port, WARMUP, pid)
            for number in range(block, min(block + BLOCK, count)):
                shift = number % len(names)
                order = names[shift:] + names[:shift]
                runs = {}
                for name in order:
                    port, pid = servers[name]
                    runs[name] = wrk(port, seconds, pid)
                rounds.append(runs)
                ratios = " ".join(
                    f"{runs[kind].rps / runs[base].rps:.3f}" for kind, base, _ in RATIOS
                )
                print(
                    f"round {number + 1:2} (first {order[0]}): "
                    + " | ".join(f"{name} {cell(runs[name])}" for name in names)
                    + f" | rps ratios {ratios}"
                )
    return rounds


def main(count: int, seconds: int) -> None:
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("granian_throughput: skipped, needs wrk and taskset (apt-get install -y wrk)")
        return
    print(
        f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --timeout {WRK_TIMEOUT} --latency; servers on "
        f"cpu {SERVER_CPU}, wrk on cpu {LOAD_CPU}; {count} rounds of {len(KINDS)} kinds, "
        f"order rotating, fresh servers every {BLOCK}; load average {load_average()}"
    )
    print(
        "each cell: req/s, p99, server CPU per request, the larger foreign share (server/wrk "
        "core); rps ratios: " + ", ".join(f"{k} / {b}" for k, b, _ in RATIOS)
    )
    rounds = run_rounds(count, seconds)
    for name in KINDS:
        runs = [r[name] for r in rounds]
        errors = sum(r.errors for r in runs)
        print(
            f"{name:>16} median: {statistics.median(r.rps for r in runs):6.0f} req/s "
            f"p50 {statistics.median(r.p50 for r in runs) * 1e3:5.2f} ms "
            f"p99 {statistics.median(r.p99 for r in runs) * 1e3:6.2f} ms "
            f"cpu {statistics.median(r.cpu_per_request for r in runs) * 1e6:5.1f} us/req"
            f"{f', {errors} errors' if errors else ''}"
        )
    for kind, base, goal in RATIOS:
        medians = {
            key: statistics.median(getattr(r[kind], key) for r in rounds)
            / statistics.median(getattr(r[base], key) for r in rounds)
            for key in ("rps", "p99", "cpu_per_request")
        }
        # A round counts for this ratio when neither of its two runs was crowded out.
        clean = [r for r in rounds if max(foreign(r[kind]), foreign(r[base])) < CLEAN_FOREIGN]
        judged = clean if len(clean) >= MIN_CLEAN else rounds
        paired = statistics.median(r[kind].rps / r[base].rps for r in judged)
        which = f"{len(clean)} clean rounds" if judged is clean else "all rounds, too few clean"
        verdict = (
            "context"
            if goal is None
            else f"goal >= {goal}: {'met' if paired >= goal else 'MISSED'} ({paired:.3f}, {which})"
        )
        print(f"{kind} / {base} ({verdict})")
        print(
            f"    ratio of medians: throughput {medians['rps']:.3f}, p99 {medians['p99']:.3f}, "
            f"cpu/request {medians['cpu_per_request']:.3f}"
        )
        print(f"    median of round ratios: {rounds_ratio(rounds, kind, base)}")
        if clean:
            print(f"    clean rounds ({len(clean)}): {rounds_ratio(clean, kind, base)}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("rounds", nargs="?", type=int, default=12)
    parser.add_argument("seconds", nargs="?", type=int, default=2)
    args = parser.parse_args()
    main(args.rounds, args.seconds)
