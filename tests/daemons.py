"""Servers the tests start as subprocesses: logged, waited for with a deadline, stopped bounded.

:class:`Daemon` runs one server in a session of its own with its output in a
log file; a server that does not start fails the test with the end of that log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from conftest import free_ports

LOOPBACK = "127.0.0.1"
#: Bound on asking a server whether it answers (it does in milliseconds when it is there).
PROBE_TIMEOUT = 1.0
#: Bound on a server exiting after its stop signal before its session is killed.
STOP_TIMEOUT = 20.0
#: Bound on one command a test runs beside a server (rabbitmqctl, initdb).
COMMAND_TIMEOUT = 60.0
#: Tries with fresh ports when another process took a free port before the server bound it.
PORT_TRIES = 3


def ask(port: int, request: bytes, want: int, timeout: float) -> bytes:
    """Up to ``want`` bytes answered to ``request`` on a loopback port, all within ``timeout``."""
    deadline = time.monotonic() + timeout
    answer = b""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(request)
            while len(answer) < want and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(want - len(answer))
                if not chunk:
                    break
                answer += chunk
    except OSError:
        pass
    return answer


def accepts(port: int) -> bool:
    """Whether a loopback ``port`` accepts a connection within :data:`PROBE_TIMEOUT`."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=PROBE_TIMEOUT).close()
    except OSError:
        return False
    return True


class PortTaken(Exception):
    """A server exited at start because another process took its port (start on others)."""


class Daemon:
    """A server in a subprocess (a session of its own) with its output appended to ``log``.

    ``stop_signal`` is its graceful stop (SIGINT for postgres: a fast shutdown
    that does not wait for clients to leave).
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name, self.args, self.log = name, args, log
        self.env, self.user, self.cwd, self.stop_signal = env, user, cwd, stop_signal
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        """Start the process and :meth:`wait_ready`.

        Raises:
            PortTaken: it exited saying its address is in use.
            pytest.fail.Exception: see :meth:`wait_ready`.
        """
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
                start_new_session=True,
            )
        self.wait_ready(ready, timeout)

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready()`` until it is true, within ``timeout``.

        Raises:
            PortTaken: the process exited at start saying its address is in use.
            pytest.fail.Exception: it exited, or was not ready in time (it is then
                stopped), with the end of its log.
        """
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                if re.search(r"(?i)address already in use|eaddrinuse", self._this_run()):
                    raise PortTaken(self.name)
                self.fail(f"exited (code {code}) before it was ready")
            if time.monotonic() > deadline:
                self.stop()
                self.fail(f"was not ready within {timeout:g}s")
            time.sleep(0.05)

    def _this_run(self) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(self._log_from)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Send the stop signal and wait for the exit; after ``timeout``, SIGKILL its session."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the process and whatever it started in its session; wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            # The process is not reaped yet, so its session id is still its own.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
        self.proc = None

    def fail(self, what: str) -> NoReturn:
        """Fail the test: ``what`` happened to this server, with the end of its log."""
        fail(self.name, what, self.log)


def fail(name: str, what: str, log: Path, lines: int = 40) -> NoReturn:
    """Fail the test: ``what`` happened to server ``name``, with the last ``lines`` of its log."""
    try:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError as exc:
        tail = f"(no log: {exc})"
    pytest.fail(f"{name} {what}; the end of {log}:\n{tail}", pytrace=False)


def with_free_ports(count: int, start: Callable[[list[int]], None]) -> None:
    """``start(ports)`` with ``count`` free loopback ports, again with others on :exc:`PortTaken`.

    Raises:
        PortTaken: the last of :data:`PORT_TRIES` tries found a port taken.
    """
    for attempt in range(PORT_TRIES):
        try:
            start(free_ports(count))
            return
        except PortTaken:
            if attempt == PORT_TRIES - 1:
                raise
