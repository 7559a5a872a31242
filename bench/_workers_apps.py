"""The app and the three pools that ``workers_throughput.py`` and ``workers_reload.py`` compare.

:func:`pid` answers every request with the pid of the worker that served it
(as ``tests/workers/apps.py``'s ``pid``), so that readiness can mean "every
worker answered" and a reload can be seen replacing them. :class:`Pool` runs
one of :data:`KINDS` with N workers on a free loopback port:

* ``quiesce``: ``quiesce run _workers_apps:pid --workers N --no-access-log``.
  It has no loop or HTTP-parser flags: its workers run ``App.run()``, which
  picks uvloop when installed, and uvicorn's ``http="auto"`` picks httptools.
* ``gunicorn``: ``gunicorn -w N -k uvicorn.workers.UvicornWorker``. That
  class is deprecated in uvicorn 0.55 for the ``uvicorn-worker`` package,
  which is not installed here, so the deprecated class it is (the warning
  goes to the discarded stderr). Its ``CONFIG_KWARGS`` are ``loop="auto",
  http="auto"`` (uvloop, httptools), and without ``--access-logfile`` the
  ``uvicorn.access`` logger it sets up has no handlers: no access log.
* ``uvicorn``: ``uvicorn --workers N --no-access-log --loop uvloop --http httptools``.

Every pool runs in a session of its own; at the end it gets SIGTERM, then
whatever of it is left (quiesce's workers have sessions of their own) is
SIGKILLed by pid, each one checked to be the process that was seen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any

from stop_targets import lifespan
from stoptime import free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
KINDS = ("quiesce", "gunicorn", "uvicorn")
#: Bounds: a pool answering from every worker, a pool's exit after SIGTERM.
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def pid(scope: Scope, receive: Receive, send: Send) -> None:
    """A trivial ASGI app with a lifespan: every response's body is this worker's pid."""
    if scope["type"] == "http":
        body = str(os.getpid()).encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)


def command(kind: str, port: int, workers: int, log_level: str) -> list[str]:
    """The command line a user would type for ``kind``."""
    target, address = "_workers_apps:pid", ("--host", "127.0.0.1", "--port", str(port))
    if kind == "quiesce":
        return [
            *(PY, "-m", "quiesce", "run", target, "--app-dir", str(BENCH), *address),
            *("--workers", str(workers), "--no-access-log", "--log-level", log_level),
        ]
    if kind == "gunicorn":
        return [
            *(PY, "-m", "gunicorn", "-w", str(workers), "-k", "uvicorn.workers.UvicornWorker"),
            *("--pythonpath", str(BENCH), "-b", f"127.0.0.1:{port}", "--log-level", log_level),
            target,
        ]
    if kind == "uvicorn":
        return [
            *(PY, "-m", "uvicorn", target, "--app-dir", str(BENCH), *address),
            *("--workers", str(workers), "--no-access-log", "--loop", "uvloop"),
            *("--http", "httptools", "--log-level", log_level),
        ]
    raise ValueError(f"unknown kind {kind!r}")


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])  # field 22
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    found = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in path.read_text().split()]
    return found


def _is_helper(pid: int) -> bool:
    """Whether ``pid`` is the resource tracker of multiprocessing (uvicorn's), not a worker."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone: not a worker either


def get_pid(port: int, timeout: float = 2.0) -> int | None:
    """One request on a fresh connection; the pid that answered, None if none did."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return int(body) if head.startswith(b"HTTP/1.1 200") and body.isdigit() else None


class Pool:
    """One kind with N workers in a session of its own, for the ``with`` block.

    Its stderr is read by a thread (:attr:`log`); stdout is discarded.
    """

    def __init__(self, kind: str, workers: int, *, log_level: str = "warning") -> None:
        self.kind = kind
        self.count = workers
        self.port = free_port()
        self.log = ""
        self._seen: dict[int, int | None] = {}  # pid -> start time, of every process of it seen
        self.proc = subprocess.Popen(
            command(kind, self.port, workers, log_level),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log += line.decode(errors="replace")

    def workers(self) -> list[int]:
        """The pids of its workers now (its processes but the parent and helpers)."""
        pids = [p for p in _children(self.proc.pid) if not _is_helper(p)]
        for p in pids:
            self._seen.setdefault(p, _start_time(p))
        return pids

    def tree(self) -> list[int]:
        """The parent and every process under it now (remembered for the kill at the end)."""
        found, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            found.append(p)
            self._seen.setdefault(p, _start_time(p))
            todo += _children(p)
        return found

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> set[int]:
        """Until each of its N workers answered a request; returns their pids.

        Fresh connections land on whichever worker accepts first, so it asks until
        N distinct pids have answered, each of them a child of the pool right now.
        """
        deadline = time.monotonic() + timeout
        answered: set[int] = set()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited {self.proc.returncode}:\n{self.log}")
            if (p := get_pid(self.port)) is not None:
                answered.add(p)
            answered &= set(self.workers())
            if len(answered) >= self.count:
                return answered
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.kind}: {len(answered)} of {self.count} workers answered "
                    f"within {timeout:.0f} s:\n{self.log[-2000:]}"
                )
            time.sleep(0.01)

    def cpu_ns(self) -> dict[int, int]:
        """CPU time of each of its processes so far (all threads), by pid."""
        from http_throughput import process_cpu_ns

        return {p: process_cpu_ns(p) for p in self.tree()}

    def stop(self, timeout: float = EXIT_TIMEOUT) -> str:
        """SIGTERM the parent and wait (bounded); returns how it went."""
        self.tree()
        if self.proc.poll() is not None:
            return f"had exited {self.proc.returncode}"
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return f"no exit {timeout:.0f} s after SIGTERM"
        return f"exit {code} {time.monotonic() - began:.2f} s after SIGTERM"

    def kill(self) -> None:
        """SIGKILL what is left of it: its session, then each process seen that still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for p, started in self._seen.items():
            if started is not None and _start_time(p) == started:  # the same process, not a reuse
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._reader.join(5)

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        finally:
            self.kill()
