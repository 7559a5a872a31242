"""Measure SIGTERM-to-exit of server processes, alternating kinds round by round."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Block until ``proc`` exits; return the ``perf_counter()`` of the exit (not reaped).

    ``Popen.wait(timeout=...)`` polls with sleeps growing to 50 ms, which rounds an
    exit up to the next poll (a 40 ms exit reads as 63.5 ms); a pidfd wakes at once.
    """
    fd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"process {proc.pid} still running after {timeout}s")
        return time.perf_counter()
    finally:
        os.close(fd)


def stop_once(command: Sequence[str]) -> tuple[float, int]:
    """Start ``command`` (with a free port appended), wait for it to listen, SIGTERM it.

    Returns (seconds from SIGTERM to process exit, exit code).
    """
    port = free_port()
    proc = subprocess.Popen(
        [*command, str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
        time.sleep(0.2)  # let the server settle after its first accept, as an idle server would
        began = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        ended = wait_exit(proc, timeout=30)
        return ended - began, proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def compare(targets: dict[str, Sequence[str]], rounds: int, baseline: str) -> dict[str, float]:
    """Alternate the targets ``rounds`` times; print medians and ratios against ``baseline``."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, command in targets.items():
            took, code = stop_once(command)
            if code not in (0, 130, -signal.SIGTERM):
                print(f"  {name}: exit code {code}", file=sys.stderr)
            times[name].append(took)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        spread = f"min {min(times[name]) * 1000:.1f} max {max(times[name]) * 1000:.1f}"
        ratio = median / medians[baseline]
        print(f"{name:>19}: {median * 1000:7.1f} ms median ({spread}), {ratio:.2f}x {baseline}")
    return medians


@contextlib.contextmanager
def serving(
    command: Sequence[str],
    *,
    cpus: str | None = None,
    settle: float = 0.2,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``command`` with a free port appended until the block ends; yield (process, port).

    ``cpus`` pins the server with ``taskset -c`` (taskset execs it: the pid is the server's).
    ``stdout`` and ``stderr`` are the server's sinks (as for :class:`subprocess.Popen`;
    default: discarded). The process is killed when the block ends, whatever happened in it.
    """
    port = free_port()
    pin = ["taskset", "-c", cpus] if cpus is not None else []
    proc = subprocess.Popen(
        [*pin, *command, str(port)],
        cwd=ROOT,
        stdout=stdout,
        stderr=stderr,
    )
    try:
        wait_listening(port, proc)
        time.sleep(settle)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def exit_clock(proc: subprocess.Popen[bytes]) -> asyncio.Future[float]:
    """A future of the ``perf_counter()`` at which ``proc`` exits, read from a pidfd.

    The pidfd becomes readable the moment the process exits, without a polling
    interval or a child-watcher thread in between. Reap the process afterwards.
    """
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[float] = loop.create_future()
    fd = os.pidfd_open(proc.pid)

    def on_exit() -> None:
        now = time.perf_counter()
        loop.remove_reader(fd)
        os.close(fd)
        if not exited.done():
            exited.set_result(now)

    loop.add_reader(fd, on_exit)

    def on_done(future: asyncio.Future[float]) -> None:
        if future.cancelled():  # abandoned before the exit: release the fd
            loop.remove_reader(fd)
            os.close(fd)

    exited.add_done_callback(on_done)
    return exited


def median_line(
    name: str, values: Sequence[float], unit: str = "ms", scale: float = 1e3, digits: int = 1
) -> str:
    """``name: median (min, max)`` with ``values`` scaled to ``unit``."""
    med, low, high = (v * scale for v in (statistics.median(values), min(values), max(values)))
    return (
        f"{name:>19}: {med:7.{digits}f} {unit} median "
        f"(min {low:.{digits}f} max {high:.{digits}f}, n={len(values)})"
    )
