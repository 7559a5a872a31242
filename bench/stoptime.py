"""Measure SIGTERM-to-exit of server processes, alternating kinds round by round."""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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
        code = proc.wait(timeout=30)
        return time.perf_counter() - began, code
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
        print(f"{name:>16}: {median * 1000:7.1f} ms median ({spread}), {ratio:.2f}x {baseline}")
    return medians
