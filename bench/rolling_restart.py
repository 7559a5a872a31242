"""Rolling restart under load: failed requests and latency, steady state against the restart.

Run: ``python bench/rolling_restart.py [--backend file|etcd|both] [--clients 50]
[--rate 250] [--steady 5] [--drain 1.0 --drain min=0.5,max=5,idle=0.3] [--etcd URL]``.

Three instances of a small service (this script with ``--serve``: an App with
an HTTPServer, registered with the default options of the backend) run as
subprocesses. One discovery client (:class:`quiesce.client.AsyncClient`)
sends GET and POST requests from ``--clients`` concurrent workers in a
thread of its own, paced to ``--rate`` requests a second in all (flat out,
the Python client saturates its core and the latency measured is its own
queue): first ``--steady`` seconds of steady state, then each
instance in turn gets SIGTERM, exits, starts again and is listed by the
registry (its ``READY`` line comes after registration). Requests are counted
in the window they were sent in. Without ``--etcd``, an etcd from PATH is
started on free loopback ports.

Each ``--drain`` (as :func:`quiesce.drain.parse_drain` reads it) is one run on
each backend; by default the fixed 1 s delay and the adaptive drain
``min=0.5,max=5,idle=0.3``, side by side, with the whole restart's time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from registry_notice import local_etcd
from stop_targets import Receive, Scope, Send

from quiesce import App, HTTPServer
from quiesce.client import AsyncClient
from quiesce.drain import parse_drain

ROOT = Path(__file__).resolve().parent.parent
#: Bounds on an instance starting (READY) and stopping after SIGTERM.
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0


# -- the service --------------------------------------------------------------------


def serve(ident: str, url: str, drain_delay: str) -> None:
    """One instance: answers every request with its id (``--serve``)."""
    body = ident.encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    app = App(
        name="orders", id=ident, registry=url, drain_delay=parse_drain(drain_delay), stop_timeout=10
    )
    app.add_server(HTTPServer(answer, port=0, access_log=False, lifespan="off"))

    @app.after_start
    def ready() -> None:
        print(f"READY {ident}", flush=True)

    app.run()


class Instance:
    """An instance subprocess; its stdout is read in a thread."""

    def __init__(self, ident: str, url: str, drain_delay: str) -> None:
        self.ident = ident
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", ident, url, drain_delay],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_ready(self) -> None:
        """Block until the instance prints READY (it is registered by then)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line == f"READY {self.ident}":
                return
        raise SystemExit(f"instance {self.ident} did not become ready")

    def stop(self) -> float:
        """SIGTERM, wait for the exit; returns how long the stop took."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(EXIT_TIMEOUT)
        if code != 0:
            raise SystemExit(f"instance {self.ident} exited with {code}")
        return time.monotonic() - began

    def kill(self) -> None:
        """Kill it if it still runs; release its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- the load -----------------------------------------------------------------------


@dataclass
class Sample:
    """One request: when it was sent, how long it took, what went wrong."""

    sent: float
    latency: float
    error: str | None


@dataclass
class Load:
    """``clients`` workers sending GET and POST through one discovery client, ``rate`` a second."""

    url: str
    clients: int
    rate: float
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Send requests until :attr:`stop` is set (in a thread of its own)."""
        asyncio.run(self._main())

    async def _main(self) -> None:
        limits = httpx.Limits(
            max_connections=self.clients * 2, max_keepalive_connections=self.clients
        )
        async with AsyncClient(service="orders", registry=self.url, limits=limits) as client:
            await asyncio.gather(*(self._worker(client, n) for n in range(self.clients)))

    async def _worker(self, client: AsyncClient, n: int) -> None:
        count = 0
        period = self.clients / self.rate
        next_at = time.perf_counter() + period * n / self.clients  # spread the workers out
        while not self.stop.is_set():
            # Paced, not flat out: a saturated client would measure its own queue.
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at = max(next_at + period, time.perf_counter())
            count += 1
            method = "POST" if (n + count) % 2 else "GET"
            sent = time.perf_counter()
            error = None
            try:
                response = await client.request(method, "/orders", content=b'{"sku":"A-1"}')
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{method} {type(exc).__name__}: {exc}"
            self.samples.append(Sample(sent, time.perf_counter() - sent, error))


def stats(label: str, samples: list[Sample], seconds: float) -> None:
    ms = sorted(s.latency * 1000 for s in samples)
    if not ms:
        print(f"{label:<8} no requests")
        return
    failed = [s.error for s in samples if s.error]

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(len(ms) * p))]

    print(
        f"{label:<8} {len(ms):>8} {len(failed):>7} {len(ms) / seconds:>8.0f} "
        f"{pct(0.5):>8.2f} {pct(0.99):>8.2f} {ms[-1]:>8.2f}"
    )
    for error in sorted(set(failed))[:5]:
        print(f"         failed: {error}")


def rolling(url: str, label: str, clients: int, rate: float, steady: float, drain: str) -> None:
    instances = [Instance(f"i{n}-0", url, drain) for n in range(3)]
    load = Load(url, clients, rate)
    thread = threading.Thread(target=load.run, daemon=True)
    try:
        for inst in instances:
            inst.wait_ready()
        thread.start()
        time.sleep(1.0)  # warm-up: connections opened, not counted
        t0 = time.perf_counter()
        time.sleep(steady)
        t1 = time.perf_counter()
        stops = []
        for n in range(3):
            stops.append(instances[n].stop())
            instances[n].kill()
            instances[n] = Instance(f"i{n}-1", url, drain)
            instances[n].wait_ready()
        t2 = time.perf_counter()
        load.stop.set()
        thread.join(30)
    finally:
        load.stop.set()
        for inst in instances:
            inst.kill()
    print(
        f"{label}: 3 instances, drain {drain}, {clients} clients, {rate:g} req/s; "
        f"stops took {', '.join(f'{s:.2f}' for s in stops)} s; "
        f"the whole restart {t2 - t1:.2f} s"
    )
    columns = ("requests", "failed", "req/s", "p50 ms", "p99 ms", "max ms")
    print(f"{'window':<8} " + " ".join(f"{c:>{max(7, len(c))}}" for c in columns))
    stats("steady", [s for s in load.samples if t0 <= s.sent < t1], t1 - t0)
    stats("restart", [s for s in load.samples if t1 <= s.sent < t2], t2 - t1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["etcd", "file", "both"], default="both")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=250.0, help="requests a second, all clients")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of steady state")
    parser.add_argument(
        "--drain", action="append", help="a drain delay to run with (repeat for several)"
    )
    parser.add_argument("--etcd", help="an etcd:// URL to use instead of a private etcd")
    args = parser.parse_args()
    for drain in args.drain or ["1.0", "min=0.5,max=5,idle=0.3"]:
        parse_drain(drain)  # a typo fails here, not in three subprocesses
        run = (args.clients, args.rate, args.steady, drain)
        if args.backend in ("file", "both"):
            with tempfile.TemporaryDirectory() as folder:
                rolling(f"file://{folder}", "file registry (poll 0.1 s)", *run)
        if args.backend in ("etcd", "both"):
            if args.etcd:
                rolling(args.etcd, "etcd", *run)
            else:
                with local_etcd() as url:
                    rolling(url, "etcd", *run)


if __name__ == "__main__":
    main()
