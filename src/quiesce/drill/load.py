"""The drill's load: keep-alive clients sending GETs back to back, every answer classified.

Each of ``clients`` workers sends one request at a time, the next as soon as
the last one ended; every request is a :class:`Sample`: when it was sent
(monotonic seconds from the start of the load), what came of it, and whether
it needed a retry. What came of it is one kind:

- ``ok``: an HTTP status below 400;
- ``HTTP <code>``: any other status, by code (``HTTP 503``);
- ``refused``: no connection could be made (nothing listens, or it refused);
- ``reset``: the connection broke before a whole response (reset, closed
  without an answer: a keep-alive connection the server closed under the request);
- ``timeout``: no answer within the request timeout;
- ``no instance``: the discovery client had no instance to send it to;
- ``other``: anything else (the first of each is kept as an example).

With one instance each worker has an :class:`httpx.AsyncClient` of its own
(one connection, kept alive); with several, the workers share one
:class:`quiesce.client.AsyncClient`, which finds the instances in the registry.
Retries are off by default: the verdict is what a client without them sees.
With ``retries`` N, a refused or broken request is sent again up to N times
(by the discovery client to other instances), as a client with retries would;
the sample says it needed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import httpx

from quiesce.client import AsyncClient, NoInstanceError

__all__ = ["OK", "Load", "Sample", "classify"]

OK = "ok"
#: The kinds a retry is worth it for: nothing was answered (connect failure, broken connection).
RETRIED_KINDS = frozenset({"refused", "reset"})
#: A worker whose request failed waits this long before its next one, so that a service
#: that stopped listening is not hammered by a busy loop of refusals (each takes ~50 µs).
FAILURE_PAUSE = 0.01
#: How much longer than the longest possible request the end of the load waits for the
#: last ones before cancelling them (they are then counted as ``other``).
END_MARGIN = 2.0
#: httpcore's trace events that start one attempt: a request written on a connection,
#: or a connection that could not be made.
_ATTEMPT_EVENTS = frozenset(
    {"http11.send_request_headers.started", "connection.connect_tcp.failed"}
)


class Sample(NamedTuple):
    """One request: sent at ``sent`` seconds into the load; its kind; whether it was retried."""

    sent: float
    kind: str
    retried: bool


def classify(exc: BaseException) -> str:
    """The kind of a failed request (see the module docstring), from its exception."""
    if isinstance(exc, NoInstanceError):
        return "no instance"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "refused"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "reset"
    return "other"


class Load:
    """Workers sending ``GET path`` until :meth:`stop`, one request at a time each.

    Build one with :meth:`direct` (one instance) or :meth:`discovery` (several).
    """

    def __init__(self, *, timeout: float, retries: int) -> None:
        self.retries = retries
        self.samples: list[Sample] = []
        #: The first error message of each failed kind other than HTTP statuses.
        self.examples: dict[str, str] = {}
        self.completed = 0
        self.failed = 0
        self.began = 0.0
        self.ended: float | None = None
        self._longest = timeout * (retries + 1)
        self._senders: list[Callable[[], Awaitable[tuple[str, bool]]]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    @classmethod
    def direct(cls, url: str, path: str, *, clients: int, timeout: float, retries: int) -> Load:
        """``clients`` workers, each with a client of its own to ``url`` (one connection)."""
        load = cls(timeout=timeout, retries=retries)
        for _ in range(clients):
            http = httpx.AsyncClient(
                base_url=url,
                timeout=timeout,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                trust_env=False,  # a proxy from the environment has no business on loopback
            )
            load._senders.append(functools.partial(load._direct, http, path))
            load._closers.append(http.aclose)
        return load

    @classmethod
    def discovery(
        cls, client: AsyncClient, path: str, *, clients: int, timeout: float, retries: int
    ) -> Load:
        """``clients`` workers sharing one discovery client (which retries, ``retries`` times)."""
        load = cls(timeout=timeout, retries=retries)
        load._senders = [functools.partial(load._discovered, client, path)] * clients
        load._closers = [client.aclose]
        return load

    def start(self) -> float:
        """Start the workers; returns the monotonic time the load began."""
        self.began = time.monotonic()
        self._workers = [
            asyncio.create_task(self._work(send), name=f"quiesce drill client {n}")
            for n, send in enumerate(self._senders)
        ]
        return self.began

    async def stop(self) -> None:
        """Send no more; wait for the requests still out (bounded), close the clients."""
        self.ended = time.monotonic()
        self._stopping.set()
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=self._longest + END_MARGIN)
            for task in late:
                task.cancel()
            await asyncio.wait(self._workers)
        await asyncio.gather(*(close() for close in self._closers))

    async def _work(self, send: Callable[[], Awaitable[tuple[str, bool]]]) -> None:
        while not self._stopping.is_set():
            sent = time.monotonic()
            try:
                kind, retried = await send()
            except asyncio.CancelledError:
                # Cut by stop() after every bound: a request without an outcome is not ok.
                self._record(sent, "other", False)
                self.examples.setdefault("other", "cut at the end of the load, unanswered")
                raise
            self._record(sent, kind, retried)
            if kind != OK:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FAILURE_PAUSE):
                        await self._stopping.wait()

    def _record(self, sent: float, kind: str, retried: bool) -> None:
        self.samples.append(Sample(sent - self.began, kind, retried))
        self.completed += 1
        if kind != OK:
            self.failed += 1

    def _failed(self, exc: Exception) -> str:
        kind = classify(exc)
        if kind not in self.examples:
            self.examples[kind] = _describe(exc)
        return kind

    async def _direct(self, http: httpx.AsyncClient, path: str) -> tuple[str, bool]:
        attempt = 0
        while True:
            try:
                response = await http.get(path)
            except Exception as exc:
                kind = self._failed(exc)
                if kind in RETRIED_KINDS and attempt < self.retries:
                    attempt += 1
                    continue
                return kind, attempt > 0
            return _status_kind(response), attempt > 0

    async def _discovered(self, client: AsyncClient, path: str) -> tuple[str, bool]:
        attempts = 0
        extensions: dict[str, Any] = {}
        if self.retries:
            # The discovery client retries inside its transport; httpcore's trace says how
            # many attempts one request took.
            async def trace(event: str, info: dict[str, Any]) -> None:
                nonlocal attempts
                if event in _ATTEMPT_EVENTS:
                    attempts += 1

            extensions["trace"] = trace
        try:
            response = await client.get(path, extensions=extensions)
        except Exception as exc:
            return self._failed(exc), attempts > 1
        return _status_kind(response), attempts > 1


def _describe(exc: BaseException) -> str:
    """``ReadError: ...``; when httpx's message is empty, the first cause that says more."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cause, depth = exc.__cause__ or exc.__context__, 0
    while not str(exc) and cause is not None and depth < 4:
        if str(cause):
            text += f" ({type(cause).__name__}: {cause})"
            break
        cause, depth = cause.__cause__ or cause.__context__, depth + 1
    return text[:300]


def _status_kind(response: httpx.Response) -> str:
    return OK if response.status_code < 400 else f"HTTP {response.status_code}"
