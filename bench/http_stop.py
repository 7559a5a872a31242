"""HTTP stop latency, side by side: quiesce ``HTTPServer`` vs aiohttp ``web.run_app`` vs uvicorn.

(a) Idle: SIGTERM to process exit (goal: quiesce <= 0.7x aiohttp).
(b) Under load: N keep-alive clients each with one ``/sleep?ms=300`` request in
    flight at SIGTERM; "exit time - end of the last in-flight request", the end
    being when the last response's body arrives client-side and the exit read
    from a pidfd (goal <= 30 ms). Every response must be a 200.
(c) A stop timeout of 1 s with 4 s of work left (``HTTPServer(stop_timeout=1)``,
    aiohttp ``shutdown_timeout=1``, uvicorn ``--timeout-graceful-shutdown 1``):
    SIGTERM to exit (goal: quiesce <= 1.05 s).

Both of quiesce's engines run, each next to its bare CLI: ``quiesce-http``
(uvicorn) and ``quiesce-granian`` (``engine="granian"``, held to the same
goals), ``uvicorn-cli`` and ``granian-cli`` (whose stop bound in (c) is
``--workers-kill-timeout 1``).

Kinds alternate round by round; the targets are in ``stop_targets.py``.
Run: ``python bench/http_stop.py [rounds]`` (default 6 idle, 4 loaded, 3 timeout rounds).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

from stoptime import compare, exit_clock, median_line, serving

PY = sys.executable
TARGET = "bench/stop_targets.py"
KINDS = ("quiesce-http", "aiohttp", "uvicorn-cli", "quiesce-granian", "granian-cli")
#: Compared with aiohttp after ``KINDS[:2]``'s lines: quiesce's other engine.
GRANIAN = "quiesce-granian"
LOAD_CLIENTS = 50
LOAD_MS = 300
TIMEOUT_CLIENTS = 10
TIMEOUT_MS = 4100  # SIGTERM goes ~0.1 s in: 4 s of work left
STOP_TIMEOUT = "1"
IN_FLIGHT_AFTER = 0.1  # seconds between sending the requests and SIGTERM
CLIENT_TIMEOUT = 10.0
EXIT_TIMEOUT = 15.0


class Response(NamedTuple):
    """One request as the client saw it."""

    status: int  # 0: no response (connection closed or reset)
    closing: bool  # carried ``Connection: close``
    at: float  # perf_counter() when its body had arrived (or the connection failed)


class Stop(NamedTuple):
    """One stop under load: clock readings (``perf_counter``), exit code, responses."""

    signalled: float
    exited: float
    code: int | None
    responses: list[Response]


async def request(port: int, path: str, sent: asyncio.Event) -> Response:
    """One keep-alive HTTP/1.1 GET; wait for ``sent`` to be set by all, read the response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await writer.drain()
        sent.set()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError):
            return Response(0, True, time.perf_counter())
        status = int(lines[0].split()[1])
        return Response(
            status, headers.get("connection", "").lower() == "close", time.perf_counter()
        )
    finally:
        writer.close()


async def loaded_stop(command: Sequence[str], clients: int, path: str) -> Stop:
    """Start the server, put ``clients`` requests for ``path`` in flight, SIGTERM, time it all."""
    with serving(command) as (proc, port):
        exited = exit_clock(proc)
        try:
            events = [asyncio.Event() for _ in range(clients)]
            tasks = [asyncio.create_task(request(port, path, e)) for e in events]
            async with asyncio.timeout(CLIENT_TIMEOUT):
                await asyncio.gather(*(e.wait() for e in events))
            await asyncio.sleep(IN_FLIGHT_AFTER)
            signalled = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            done, pending = await asyncio.wait(tasks, timeout=CLIENT_TIMEOUT)
            for task in pending:
                task.cancel()
            responses = [t.result() for t in done if t.exception() is None]
            try:
                async with asyncio.timeout(EXIT_TIMEOUT):
                    exit_at = await exited
            except TimeoutError:  # reported as nan and no exit code; serving() kills it
                return Stop(signalled, float("nan"), None, responses)
            return Stop(signalled, exit_at, proc.wait(timeout=5), responses)
        finally:
            exited.cancel()


def command(kind: str, *options: str) -> list[str]:
    return [PY, TARGET, kind, *options]


def idle(rounds: int) -> None:
    print(f"(a) idle stop, SIGTERM -> exit, {rounds} rounds (goal: quiesce-http <= 0.7x aiohttp)")
    medians = compare({kind: command(kind) for kind in KINDS}, rounds, baseline="aiohttp")
    for kind in KINDS[:2]:
        print(f"    {kind} / aiohttp: {medians[kind] / medians['aiohttp']:.2f}")
    print(f"    {GRANIAN} / aiohttp: {medians[GRANIAN] / medians['aiohttp']:.2f}")


def describe(stops: Sequence[Stop], expected: int) -> str:
    """What the clients got over all rounds of one kind, and how the process exited."""
    statuses = Counter(r.status for stop in stops for r in stop.responses)
    parts = [f"{n}x {status or 'no response'}" for status, n in sorted(statuses.items())]
    missing = expected * len(stops) - sum(statuses.values())
    if missing:
        parts.append(f"{missing}x client timeout")
    closing = sum(r.closing for stop in stops for r in stop.responses if r.status)
    codes = sorted({str(stop.code) for stop in stops})
    return f"{', '.join(parts)}; {closing} with Connection: close; exit {'/'.join(codes)}"


async def rounds_of(
    rounds: int, clients: int, path: str, options: Sequence[str], show: Callable[[Stop], str]
) -> dict[str, list[Stop]]:
    """Run every kind ``rounds`` times, alternating, one printed line per round."""
    stops: dict[str, list[Stop]] = {kind: [] for kind in KINDS}
    for r in range(rounds):
        cells = []
        for kind in KINDS:
            stop = await loaded_stop(command(kind, *options), clients, path)
            stops[kind].append(stop)
            cells.append(f"{kind} {show(stop)}")
        print(f"    round {r + 1}: " + " | ".join(cells))
    for kind, kind_stops in stops.items():
        print(f"    {kind:>19}: {describe(kind_stops, clients)}")
    return stops


def after_last_response(stop: Stop) -> float:
    answered = [r.at for r in stop.responses if r.status]
    return stop.exited - (max(answered) if answered else stop.signalled)


async def under_load(rounds: int) -> None:
    print(
        f"(b) under load: {LOAD_CLIENTS} keep-alive clients, one {LOAD_MS} ms request each, "
        f"SIGTERM {IN_FLIGHT_AFTER * 1e3:.0f} ms after sending; exit - last response "
        f"(goal <= 30 ms), {rounds} rounds"
    )
    stops = await rounds_of(
        rounds,
        LOAD_CLIENTS,
        f"/sleep?ms={LOAD_MS}",
        (),
        lambda s: f"{after_last_response(s) * 1e3:5.1f} ms",
    )
    for kind, kind_stops in stops.items():
        print("   " + median_line(kind, [after_last_response(s) for s in kind_stops]))
    totals = {k: statistics.median(s.exited - s.signalled for s in v) for k, v in stops.items()}
    print(
        "    SIGTERM -> exit medians: "
        + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in totals.items())
    )


async def with_timeout(rounds: int) -> None:
    print(
        f"(c) stop timeout {STOP_TIMEOUT} s, {TIMEOUT_CLIENTS} requests with ~4 s left at "
        f"SIGTERM; SIGTERM -> exit (goal: quiesce-http <= 1.05 s), {rounds} rounds"
    )
    stops = await rounds_of(
        rounds,
        TIMEOUT_CLIENTS,
        f"/sleep?ms={TIMEOUT_MS}",
        (STOP_TIMEOUT,),
        lambda s: f"{s.exited - s.signalled:5.3f} s",
    )
    took = {kind: [s.exited - s.signalled for s in v] for kind, v in stops.items()}
    for kind, values in took.items():
        print("   " + median_line(kind, values, unit="s", scale=1.0, digits=3))
    theirs = statistics.median(took["aiohttp"])
    for kind in KINDS[:2]:
        print(f"    {kind} / aiohttp: {statistics.median(took[kind]) / theirs:.2f}")
    print(f"    {GRANIAN} / aiohttp: {statistics.median(took[GRANIAN]) / theirs:.2f}")


if __name__ == "__main__":
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else None
    idle(scale or 6)
    asyncio.run(under_load(scale or 4))
    asyncio.run(with_timeout(scale or 3))
