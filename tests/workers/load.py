"""A small keep-alive HTTP/1.1 load of its own thread: every request's time, outcome and worker.

Each client holds one connection and sends GET after GET on it, as a
keep-alive client does; a response saying ``Connection: close`` ends the
connection after it and the client opens another (that is not a failure).
Nothing is retried: a request that gets no complete response is a failure,
kept with the pid of the worker that answered the connection's earlier
requests (the apps answer their pid), so that a test can tell whose
connections failed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

#: Bound on one request (a stuck worker's requests fail at it, they never hang the load).
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent, whether it got its response, which worker served it."""

    sent: float
    done: float
    ok: bool
    #: The pid the response named; for a failure, the pid of the connection's earlier answers.
    pid: int | None
    #: When the connection it went on was opened.
    opened: float
    error: str = ""


@dataclass
class Load:
    """``clients`` keep-alive clients on ``127.0.0.1:port`` until :meth:`stop`."""

    port: int
    clients: int = 50
    path: str = "/"
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._running = True
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="load")

    def start(self) -> Load:
        """Start the clients; returns once they are running."""
        self._thread.start()
        self._started.wait(5)
        return self

    def stop(self, timeout: float = REQUEST_TIMEOUT + 5) -> list[Sample]:
        """Stop the clients (each after its request in flight); returns every sample."""
        self._running = False
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load did not stop"
        return self.samples

    def failures(self) -> list[Sample]:
        """The failed requests so far."""
        return [s for s in list(self.samples) if not s.ok]

    def ok_since(self, when: float) -> int:
        """Successful requests sent since ``when``."""
        return sum(1 for s in list(self.samples) if s.ok and s.sent >= when)

    def pids_since(self, when: float) -> set[int]:
        """The workers that answered requests sent since ``when``."""
        return {s.pid for s in list(self.samples) if s.ok and s.sent >= when and s.pid}

    def wait_requests(self, count: int, since: float, timeout: float = 20.0) -> None:
        """Until ``count`` requests sent since ``since`` succeeded."""
        deadline = time.monotonic() + timeout
        while self.ok_since(since) < count:
            assert time.monotonic() < deadline, f"only {self.ok_since(since)} requests succeeded"
            time.sleep(0.02)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        self._started.set()
        await asyncio.gather(*tasks)

    async def _client(self) -> None:
        request = f"GET {self.path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()
        while self._running:
            opened = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), REQUEST_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                now = time.monotonic()
                self.samples.append(Sample(opened, now, False, None, opened, repr(exc)))
                await asyncio.sleep(0.01)
                continue
            pid: int | None = None
            try:
                while self._running:
                    sent = time.monotonic()
                    try:
                        writer.write(request)
                        answered, closing = await asyncio.wait_for(
                            _response(reader), REQUEST_TIMEOUT
                        )
                    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                        now = time.monotonic()
                        self.samples.append(Sample(sent, now, False, pid, opened, repr(exc)))
                        break
                    pid = answered
                    self.samples.append(Sample(sent, time.monotonic(), True, pid, opened))
                    if closing:
                        break
            finally:
                writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[int | None, bool]:
    """Read one response: the pid its body names, and whether it closes the connection."""
    status = await reader.readline()
    if not status.startswith(b"HTTP/1.1 200"):
        raise ValueError(f"status {status!r}")
    length, closing = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            closing = True
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    body = await reader.readexactly(length)
    return (int(body) if body.isdigit() else None), closing
