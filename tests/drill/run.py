"""``quiesce drill`` in a real process, as CI runs it: its exit code, stdout, stderr, verdict."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.proc import environment

ROOT = Path(__file__).resolve().parents[2]
#: Bound on one drill of the tests (a few seconds of load, starts and stops): past it the
#: drill gets SIGTERM, which stops the services it started, and the test fails.
DEADLINE = 50.0
#: The short drill of every test: seconds of load, when the signal comes, how many clients.
SHORT = ["--duration", "4", "--signal-at", "1.5", "--clients", "10"]


@dataclass
class Drill:
    """How one drill ended."""

    code: int
    stdout: str
    stderr: str

    @property
    def verdict(self) -> dict[str, Any]:
        """The ``--json`` verdict on stdout."""
        data: dict[str, Any] = json.loads(self.stdout)
        return data

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def drill(*args: str, env: dict[str, str] | None = None) -> Drill:
    """Run ``python -m quiesce drill ARGS`` from the repository's root, bounded by DEADLINE."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "drill", *args],
        cwd=ROOT,
        env=environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        end(proc)
        raise AssertionError(f"the drill did not end within {DEADLINE}s") from None
    return Drill(proc.returncode, out, err)


def end(proc: subprocess.Popen[str]) -> None:
    """End a drill that still runs as CI would: SIGTERM (it stops its services), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def python_command(*args: str) -> str:
    """A ``--command`` running this virtualenv's interpreter with ``args``."""
    return " ".join([sys.executable, *args])
