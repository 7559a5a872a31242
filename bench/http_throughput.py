"""Throughput and p99 latency: a trivial ASGI app through ``HTTPServer`` vs the uvicorn CLI.

Both serve :func:`stop_targets.asgi_app` on uvloop with httptools and no
access log: ours as ``App(servers=[HTTPServer(app, http="httptools",
access_log=False)]).run()``, the CLI as ``uvicorn --loop uvloop --http
httptools --no-access-log``. Both servers run side by side, pinned to one
core, and ``wrk`` (a separate process, loopback) to the other; each server
gets an unmeasured warm-up, then the kinds alternate back to back, the first
of each pair swapping every pair, so that other work on the machine hits both
alike. Both processes are replaced every :data:`BLOCK` pairs, so that no one
process's memory layout decides the result.

Each run also reports the CPU that other processes (user time) and the
hypervisor (steal) took on the server's core and on wrk's ("foreign S/L": a
starved wrk measures itself, not the server); pairs where either exceeds
:data:`CLEAN_FOREIGN` are left out of the "clean pairs" line. The server's
CPU time per request (schedstat) is printed too: unlike req/s it does not
depend on wrk getting its core. ``aa`` as a third argument runs the CLI
against itself, which shows how far apart two identical servers land here.
Goals: throughput >= 0.98x the CLI, p99 <= 1.05x.

Run: ``python bench/http_throughput.py [pairs] [seconds] [aa]`` (default 12 pairs of 2 s).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from stoptime import serving

PY = sys.executable
TARGET = "bench/stop_targets.py"
KINDS = {"quiesce-http": [PY, TARGET, "quiesce-http"], "uvicorn-cli": [PY, TARGET, "uvicorn-cli"]}
SERVER_CPU = 0
LOAD_CPU = 1
CONNECTIONS = 50
WARMUP = 1
#: Pairs per pair of server processes; each block starts both afresh.
BLOCK = 4
#: A pair counts as clean when other processes took less than this share of the server core.
CLEAN_FOREIGN = 0.05
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
TICK = os.sysconf("SC_CLK_TCK")


class Run(NamedTuple):
    """What one wrk run measured."""

    rps: float
    p50: float  # seconds
    p99: float  # seconds
    errors: int
    foreign: float  # share of the server core's time other processes spent in user mode
    foreign_load: float  # the same on wrk's core
    cpu_per_request: float  # seconds of server CPU (all threads, from schedstat) per request


def cpu_user_ticks(cpu: int) -> int:
    """User + nice + steal ticks of one core, from /proc/stat (steal: the hypervisor's)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                fields = line.split()
                return int(fields[1]) + int(fields[2]) + int(fields[8])
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def process_user_ticks(pid: int) -> int:
    """User ticks of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11])  # utime: field 14, counted from the state (field 3)


def process_cpu_ns(pid: int) -> int:
    """Nanoseconds every thread of ``pid`` ran on a CPU (/proc/PID/task/*/schedstat)."""
    total = 0
    for schedstat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int(schedstat.read_text().split()[0])
    return total


def wrk(port: int, seconds: int, server_pid: int) -> Run:
    """One bounded ``wrk`` run against ``port``, pinned to the load core."""
    before = cpu_user_ticks(SERVER_CPU), process_user_ticks(server_pid), time.monotonic()
    load_before = cpu_user_ticks(LOAD_CPU), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    cpu_before = process_cpu_ns(server_pid)
    out = subprocess.run(
        [
            *("taskset", "-c", str(LOAD_CPU)),
            *("wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    core = cpu_user_ticks(SERVER_CPU) - before[0]
    server = process_user_ticks(server_pid) - before[1]
    elapsed = time.monotonic() - before[2]
    server_cpu = (process_cpu_ns(server_pid) - cpu_before) / 1e9
    foreign = max(0, core - server) / TICK / elapsed
    load_core = (cpu_user_ticks(LOAD_CPU) - load_before[0]) / TICK
    load = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - load_before[1]  # wrk's
    foreign_load = max(0.0, load_core - load) / elapsed
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if rps is None or p50 is None or p99 is None or requests is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    count = int(errors.group(1)) if errors else 0
    if socket_errors:
        count += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Run(
        float(rps.group(1)),
        float(p50.group(1)) * UNITS[p50.group(2)],
        float(p99.group(1)) * UNITS[p99.group(2)],
        count,
        foreign,
        foreign_load,
        server_cpu / max(1, int(requests.group(1))),
    )


def show(name: str, run: Run) -> str:
    errors = f", {run.errors} errors" if run.errors else ""
    return (
        f"{name} {run.rps:6.0f} req/s p50 {run.p50 * 1e3:5.2f} ms p99 {run.p99 * 1e3:6.2f} ms "
        f"cpu {run.cpu_per_request * 1e6:5.1f} us/req "
        f"foreign {run.foreign:3.0%}/{run.foreign_load:3.0%}{errors}"
    )


def ratios(pairs: Sequence[tuple[Run, Run]]) -> str:
    rps = statistics.median(a.rps / b.rps for a, b in pairs)
    p99 = statistics.median(a.p99 / b.p99 for a, b in pairs)
    cpu = statistics.median(a.cpu_per_request / b.cpu_per_request for a, b in pairs)
    return f"throughput {rps:.3f}, p99 {p99:.3f}, server cpu/request {cpu:.3f}"


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(count: int, seconds: int, kinds: dict[str, list[str]]) -> None:
    """Alternate the two ``kinds`` (the first is compared with the second)."""
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("http_throughput: skipped, needs wrk and taskset (apt-get install -y wrk)")
        return
    print(
        f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --latency; servers on cpu {SERVER_CPU}, "
        f"wrk on cpu {LOAD_CPU}; {count} pairs, fresh servers every {BLOCK}; "
        f"load average {load_average()}"
    )
    runs: dict[str, list[Run]] = {name: [] for name in kinds}
    names = list(kinds)
    for block in range(0, count, BLOCK):
        # Fresh processes every BLOCK pairs: one process's luck (memory layout, hash seed)
        # would otherwise bias every pair. Within a block both servers stay up (the idle
        # one costs nothing) so that each pair runs back to back.
        with contextlib.ExitStack() as stack:
            servers = {}
            for name, command in kinds.items():
                proc, port = stack.enter_context(serving(command, cpus=str(SERVER_CPU)))
                servers[name] = port, proc.pid
                wrk(port, WARMUP, proc.pid)
            for pair in range(block, min(block + BLOCK, count)):
                order = names if pair % 2 == 0 else names[::-1]
                for name in order:
                    port, pid = servers[name]
                    runs[name].append(wrk(port, seconds, pid))
                ours, cli = runs[names[0]][-1], runs[names[1]][-1]
                print(
                    f"pair {pair + 1:2}: {show('quiesce', ours)} | {show('cli', cli)} | "
                    f"ratio rps {ours.rps / cli.rps:.3f} p99 {ours.p99 / cli.p99:.3f}"
                )
    for name, rs in runs.items():
        print(
            f"{name:>14} median: {statistics.median(r.rps for r in rs):6.0f} req/s "
            f"p50 {statistics.median(r.p50 for r in rs) * 1e3:5.2f} ms "
            f"p99 {statistics.median(r.p99 for r in rs) * 1e3:6.2f} ms "
            f"cpu {statistics.median(r.cpu_per_request for r in rs) * 1e6:5.1f} us/req"
            f"{f', {sum(r.errors for r in rs)} errors' if any(r.errors for r in rs) else ''}"
        )
    ours_runs, cli_runs = runs[names[0]], runs[names[1]]
    rps = statistics.median(r.rps for r in ours_runs) / statistics.median(r.rps for r in cli_runs)
    p99 = statistics.median(r.p99 for r in ours_runs) / statistics.median(r.p99 for r in cli_runs)
    cpu = statistics.median(r.cpu_per_request for r in ours_runs) / statistics.median(
        r.cpu_per_request for r in cli_runs
    )
    print(
        f"ratio of medians: throughput {rps:.3f} (goal >= 0.98), p99 {p99:.3f} (goal <= 1.05), "
        f"server cpu/request {cpu:.3f} (<= 1.02 matches the throughput goal)"
    )
    pairs = list(zip(ours_runs, cli_runs, strict=True))
    print(f"median of pair ratios: {ratios(pairs)}")
    clean = [
        (a, b)
        for a, b in pairs
        if max(a.foreign, b.foreign, a.foreign_load, b.foreign_load) < CLEAN_FOREIGN
    ]
    if len(clean) >= 3:
        print(f"median of clean pair ratios ({len(clean)} pairs): {ratios(clean)}")
    else:
        print(f"only {len(clean)} clean pairs (foreign < {CLEAN_FOREIGN:.0%}): machine too busy")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    # "aa" as a third argument runs the CLI against itself: the noise floor of this machine.
    same = sys.argv[3:4] == ["aa"]
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 12,
        int(sys.argv[2]) if len(sys.argv) > 2 else 2,
        {"cli (a)": KINDS["uvicorn-cli"], "cli (b)": KINDS["uvicorn-cli"]} if same else KINDS,
    )
