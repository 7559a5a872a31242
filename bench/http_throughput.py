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

``--log`` picks what the servers log and where it goes:

* ``off`` (default): no access log on either side, stdout and stderr discarded.
* ``file``: the access log on both sides, each as it logs by default
  (``stop_targets.py``'s ``-log`` kinds: quiesce through ``App.run()``'s log
  queue to stderr, the CLI's access lines to stdout), both streams of each
  server appended to one file of its own in an owner-only temp dir.
* ``slowpipe``: the same, but both streams go to a pipe that a thread here
  drains :data:`READ_CHUNK` bytes every :data:`READ_PERIOD` s (about 100 kB/s,
  a quarter or less of what either access log writes at full load: on a 2-core
  VM the CLI wrote ~7,000 lines/s of ~50 bytes, quiesce ~5,500 of ~85; at
  400 kB/s the pipe barely filled), so the pipe fills. A server whose loop
  writes its log blocks on it; quiesce's loop drops the records its writer
  thread cannot write and counts them. ``--read-period MS`` changes the pace.

In the log modes the servers are stopped with SIGTERM at the end of each block
(after a pause that lets a slow stream catch up, so that quiesce's report is
written: it has the drop count), and each block prints, per server, the
requests wrk saw answered, the access lines its stream received and the
records it dropped.

Run: ``python bench/http_throughput.py [pairs] [seconds] [aa] [--log off|file|slowpipe]
[--read-period MS]`` (default 12 pairs of 2 s, ``--log off``, 40 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from stoptime import serving

PY = sys.executable
TARGET = "bench/stop_targets.py"
KINDS = {"quiesce-http": [PY, TARGET, "quiesce-http"], "uvicorn-cli": [PY, TARGET, "uvicorn-cli"]}
#: The same servers with the access log on (``--log file`` and ``--log slowpipe``).
LOG_KINDS = {
    "quiesce-http-log": [PY, TARGET, "quiesce-http-log"],
    "uvicorn-cli-log": [PY, TARGET, "uvicorn-cli-log"],
}
LOG_MODES = ("off", "file", "slowpipe")
#: The slow reader of ``--log slowpipe``: this many bytes every READ_PERIOD seconds.
READ_CHUNK = 4096
READ_PERIOD = 0.040
#: Before the SIGTERM at the end of a block in the log modes: a slow stream catches up.
CATCH_UP = 1.0
#: How long a server may take to exit after that SIGTERM before it is killed.
EXIT_TIMEOUT = 15.0
#: wrk's own bound on one request (its default, said out loud).
WRK_TIMEOUT = "2s"
ACCESS_LINE = re.compile(rb'"GET / HTTP/1\.1" 200')
REPORT_DROPPED = re.compile(rb"log: (\d+) records dropped")
NOTE_DROPPED = re.compile(rb"(\d+) log records dropped: the log stream did not keep up")
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
    errors: int  # non-2xx responses and socket errors, timeouts included
    timeouts: int
    requests: int  # responses wrk counted
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
            *("wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", WRK_TIMEOUT),
            "--latency",
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
    got = read_wrk(out)
    return Run(
        got.rps,
        got.p50,
        got.p99,
        got.errors,
        got.timeouts,
        got.requests,
        foreign,
        foreign_load,
        server_cpu / max(1, got.requests),
    )


class WrkOutput(NamedTuple):
    """What one ``wrk --latency`` run printed (latencies in seconds, NaN with no request)."""

    rps: float
    requests: int
    p50: float
    p99: float
    errors: int  # non-2xx/3xx responses and socket errors
    timeouts: int


def read_wrk(out: str) -> WrkOutput:
    """Read ``wrk --latency``'s output.

    Raises:
        RuntimeError: it is not wrk's (no requests/s, or no latencies though it made requests).

    """
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if rps is None or requests is None or (int(requests.group(1)) and (p50 is None or p99 is None)):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    timeouts = re.search(r"timeout (\d+)", socket_errors.group(1)) if socket_errors else None
    count = int(errors.group(1)) if errors else 0
    if socket_errors:
        count += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return WrkOutput(
        float(rps.group(1)),
        int(requests.group(1)),
        float(p50.group(1)) * UNITS[p50.group(2)] if p50 else math.nan,
        float(p99.group(1)) * UNITS[p99.group(2)] if p99 else math.nan,
        count,
        int(timeouts.group(1)) if timeouts else 0,
    )


def show(name: str, run: Run) -> str:
    timeouts = f" ({run.timeouts} timeouts)" if run.timeouts else ""
    errors = f", {run.errors} errors{timeouts}" if run.errors else ""
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


class Sink:
    """Where one server's stdout and stderr go for one block: nowhere, a file, or a slow pipe.

    Use as a context manager around the server's life; :meth:`target` is what
    its ``stdout`` and ``stderr`` get, :meth:`started` is called once it runs.
    On exit (the server gone) the pipe's reader has read to the end;
    :meth:`content` is then all the server wrote.
    """

    def __init__(self, mode: str, directory: Path | None, name: str) -> None:
        self.mode = mode
        self._path: Path | None = None
        self._fd: int | None = None  # ours to close: the file, or the pipe's write end
        self._read_fd: int | None = None
        self._reader: threading.Thread | None = None
        self._data = bytearray()
        self.unfinished = False  # the reader did not see the end of the stream in time
        if mode == "file":
            assert directory is not None
            self._path = directory / f"{name.replace(' ', '_')}.log"
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC
            self._fd = os.open(self._path, flags, 0o600)
        elif mode == "slowpipe":
            self._read_fd, self._fd = os.pipe()
            self._reader = threading.Thread(target=self._read_slowly, daemon=True)

    def target(self) -> int:
        """The server's stdout and stderr (DEVNULL in the mode ``off``)."""
        return subprocess.DEVNULL if self._fd is None else self._fd

    def started(self) -> None:
        """The server holds its own copy now: close ours (the pipe's end comes with its exit)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._reader is not None:
            self._reader.start()

    def _read_slowly(self) -> None:
        assert self._read_fd is not None
        while chunk := os.read(self._read_fd, READ_CHUNK):
            self._data += chunk
            time.sleep(READ_PERIOD)

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:  # the server never started
            os.close(self._fd)
            self._fd = None
        if self._reader is not None and self._reader.is_alive():
            # The pipe holds at most its capacity (64 KiB): a fraction of a second to read.
            self._reader.join(EXIT_TIMEOUT)
            self.unfinished = self._reader.is_alive()
        if self._read_fd is not None and not self.unfinished:
            os.close(self._read_fd)
            self._read_fd = None

    def content(self) -> bytes:
        """All the server wrote (read it after the block)."""
        if self._path is not None:
            return self._path.read_bytes()
        return bytes(self._data)


def dropped(output: bytes) -> str:
    """Log records a quiesce server said it dropped: its report's count, else its notes'."""
    if report := REPORT_DROPPED.findall(output):
        return f"{int(report[-1])} dropped (its report)"
    if notes := NOTE_DROPPED.findall(output):
        return f"{sum(int(n) for n in notes)} dropped (its notes; no report line)"
    if b"quiesce report:" in output:
        return "0 dropped (its report)"
    return "no drop count"


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM ``proc`` and wait (bounded) for it; returns how it went, for the block's line."""
    if proc.poll() is not None:
        return f"had exited {proc.returncode}"
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"no exit {EXIT_TIMEOUT:.0f} s after SIGTERM: killed"
    return f"exit {code} {time.monotonic() - began:.2f} s after SIGTERM"


def main(count: int, seconds: int, kinds: dict[str, list[str]], log: str = "off") -> None:
    """Alternate the two ``kinds`` (the first is compared with the second)."""
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("http_throughput: skipped, needs wrk and taskset (apt-get install -y wrk)")
        return
    with tempfile.TemporaryDirectory(prefix="http_throughput-") as directory:  # mode 0700
        run_pairs(count, seconds, kinds, log, Path(directory))


def run_pairs(
    count: int, seconds: int, kinds: dict[str, list[str]], log: str, directory: Path
) -> None:
    sink_line = {
        "off": "stdout and stderr discarded, no access log",
        "file": "access log on, stdout and stderr to a file each (owner-only temp dir)",
        "slowpipe": (
            f"access log on, stdout and stderr to a pipe read {READ_CHUNK} B every "
            f"{READ_PERIOD * 1e3:.0f} ms (~{READ_CHUNK / READ_PERIOD / 1e3:.0f} kB/s)"
        ),
    }[log]
    print(f"log {log}: {sink_line}")
    print(
        f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --timeout {WRK_TIMEOUT} --latency; "
        f"servers on cpu {SERVER_CPU}, "
        f"wrk on cpu {LOAD_CPU}; {count} pairs, fresh servers every {BLOCK}; "
        f"load average {load_average()}"
    )
    runs: dict[str, list[Run]] = {name: [] for name in kinds}
    names = list(kinds)
    totals = {name: [0, 0] for name in kinds}  # requests answered, access lines received
    for block in range(0, count, BLOCK):
        # Fresh processes every BLOCK pairs: one process's luck (memory layout, hash seed)
        # would otherwise bias every pair. Within a block both servers stay up (the idle
        # one costs nothing) so that each pair runs back to back.
        sinks = {name: Sink(log, directory, name) for name in kinds}
        answered = dict.fromkeys(kinds, 0)
        stops = {}
        with contextlib.ExitStack() as stack:
            servers = {}
            for name, command in kinds.items():
                sink = stack.enter_context(sinks[name])
                target = sink.target()
                proc, port = stack.enter_context(
                    serving(command, cpus=str(SERVER_CPU), stdout=target, stderr=target)
                )
                sink.started()
                servers[name] = port, proc
                answered[name] += wrk(port, WARMUP, proc.pid).requests
            for pair in range(block, min(block + BLOCK, count)):
                order = names if pair % 2 == 0 else names[::-1]
                for name in order:
                    port, proc = servers[name]
                    runs[name].append(wrk(port, seconds, proc.pid))
                    answered[name] += runs[name][-1].requests
                ours, cli = runs[names[0]][-1], runs[names[1]][-1]
                print(
                    f"pair {pair + 1:2}: {show('quiesce', ours)} | {show('cli', cli)} | "
                    f"ratio rps {ours.rps / cli.rps:.3f} p99 {ours.p99 / cli.p99:.3f}"
                )
            if log != "off":
                time.sleep(CATCH_UP)
                for name, (_, proc) in servers.items():
                    stops[name] = stop(proc)
        # The servers are gone and the readers have read what they wrote.
        if log != "off":
            parts = []
            for name, sink in sinks.items():
                output = sink.content()
                lines = len(ACCESS_LINE.findall(output))
                totals[name][0] += answered[name]
                totals[name][1] += lines
                drops = f", {dropped(output)}" if "quiesce" in kinds[name][-1] else ""
                unread = ", stream not read to its end" if sink.unfinished else ""
                parts.append(
                    f"{name}: {answered[name]} answered, {lines} access lines "
                    f"({len(output) / 1e6:.1f} MB){drops}{unread}, {stops[name]}"
                )
            print(f"  block {block // BLOCK + 1} logs: " + " | ".join(parts))
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
    if log != "off":
        for name, (requests, lines) in totals.items():
            print(
                f"{name:>16} logs: {requests} answered, {lines} access lines "
                f"({lines / max(1, requests):.1%})"
            )
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("pairs", nargs="?", type=int, default=12)
    parser.add_argument("seconds", nargs="?", type=int, default=2)
    # "aa" runs the CLI against itself: the noise floor of this machine.
    parser.add_argument("aa", nargs="?", choices=["aa"])
    parser.add_argument("--log", choices=LOG_MODES, default="off")
    parser.add_argument(
        "--read-period",
        type=float,
        default=READ_PERIOD * 1e3,
        metavar="MS",
        help=f"slowpipe: read {READ_CHUNK} bytes every MS milliseconds",
    )
    args = parser.parse_args()
    READ_PERIOD = args.read_period / 1e3
    chosen = KINDS if args.log == "off" else LOG_KINDS
    ours, cli = chosen.values()
    main(
        args.pairs,
        args.seconds,
        {"cli (a)": cli, "cli (b)": cli} if args.aa else {"quiesce-http": ours, "uvicorn-cli": cli},
        args.log,
    )
