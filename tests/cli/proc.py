"""``quiesce`` in a real process: started as users start it, read after it exits.

Its stdout and stderr go to files (a pipe nobody reads could stall it), and
readiness is its own ``/readyz`` answering 200, polled under a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

TESTS = Path(__file__).resolve().parent.parent
#: The console script next to the interpreter running the tests (the virtualenv's).
CONSOLE = Path(sys.executable).parent / "quiesce"
#: Bound on a start (imports, uvicorn) and on a stop, on this noisy 2-core machine.
DEADLINE = 20.0


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``QUIESCE_*``, with ``tests/`` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIESCE_")}
    env["PYTHONPATH"] = str(TESTS)
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **(extra or {})}


class Quiesce:
    """One ``quiesce run ...`` (``python -m quiesce``, or the console script with ``console``)."""

    def __init__(
        self,
        args: list[str],
        folder: Path,
        *,
        cwd: Path,
        console: bool = False,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = folder / "stdout", folder / "stderr"
        head = [str(CONSOLE)] if console else [sys.executable, "-m", "quiesce"]
        argv = command if command is not None else [*head, "run", *args]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=environment(env), stdout=out, stderr=err
            )

    def until_ready(self, port: int) -> None:
        """Until ``/readyz`` on ``port`` answers 200; fails at once if the process exits."""
        deadline = time.monotonic() + DEADLINE
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"exited {self.proc.returncode} before ready:\n{self}")
                try:
                    if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.02)  # a refused connect returns at once: do not spin
        raise AssertionError(f"not ready within {DEADLINE}s:\n{self}")

    def terminate(self) -> int:
        """Send a real SIGTERM and wait (bounded) for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        """The exit code, within :data:`DEADLINE` (killed and failed after it)."""
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit within {DEADLINE}s:\n{self}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def __str__(self) -> str:
        return f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def stop_outcomes(report_file: Path) -> dict[str, Any]:
    """The ``--report-json`` file: its stop phases by name, and the whole report as ``_``."""
    report: dict[str, Any] = json.loads(report_file.read_text())
    return {"_": report, **{phase["name"]: phase["outcome"] for phase in report["stop"]}}


#: The ``quiesce`` fixture: ``start(args, cwd=..., console=..., env=..., command=...)``.
Start = Callable[..., Quiesce]
