"""Deregistration -> a watcher notices: latency per registry backend (goal: <= 50 ms).

Run: ``python bench/registry_notice.py [rounds] [--etcd URL] [--backend etcd|file|both]``.
Each round registers an instance, waits until a watcher lists it, then calls
``deregister`` and times until the watcher's list no longer has it. The
watcher runs in a thread with its own event loop, as a client in another
process would. Without ``--etcd``, an etcd from PATH is started on free
loopback ports with a temporary data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from quiesce.registry import Instance, from_url
from quiesce.registry.etcd import EtcdRegistry
from quiesce.registry.file import DEFAULT_POLL, FileRegistry

GOAL = 0.050
#: Up to this long a random pause before each deregistration (see rounds_of).
DEPHASE = 0.15
#: Bound on one notice; a round that exceeds it counts as failed.
NOTICE_TIMEOUT = 5.0
#: Bound on a started etcd answering /health.
ETCD_START_TIMEOUT = 20.0


@contextmanager
def local_etcd() -> Iterator[str]:
    """An etcd from PATH on free loopback ports; yields its ``etcd://`` URL."""
    binary = shutil.which("etcd")
    if binary is None:
        raise SystemExit("etcd not on PATH (apt-get install etcd-server), or pass --etcd URL")
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    client, peer = (s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    with tempfile.TemporaryDirectory() as data:
        c, p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        args = {
            "--name": "bench",
            "--data-dir": data,
            "--listen-client-urls": c,
            "--advertise-client-urls": c,
            "--listen-peer-urls": p,
            "--initial-advertise-peer-urls": p,
            "--initial-cluster": f"bench={p}",
        }
        proc = subprocess.Popen(
            [binary, *(part for pair in args.items() for part in pair)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + ETCD_START_TIMEOUT
            while True:
                try:
                    if httpx.get(c + "/health", timeout=1).json().get("health") == "true":
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("etcd did not become healthy")
                time.sleep(0.05)
            yield f"etcd://127.0.0.1:{client}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


class Watcher:
    """A watch in a thread of its own; ``wait(pred)`` blocks until a list matches."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.current: list[str] = []
        self.at = 0.0  # perf_counter() when the watch yielded ``current``
        self.changed = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.first = threading.Event()
        self.thread.start()
        self.first.wait(NOTICE_TIMEOUT)

    def _run(self) -> None:
        self.task = self.loop.create_task(self._watch())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    async def _watch(self) -> None:
        reg = from_url(self.url)
        assert isinstance(reg, EtcdRegistry | FileRegistry)
        try:
            async with reg.watch(self.name) as watch:
                async for instances in watch:
                    with self.changed:
                        self.at = time.perf_counter()
                        self.current = [i.id for i in instances]
                        self.changed.notify_all()
                    self.first.set()
        finally:
            await reg.aclose()

    def wait(self, present: str | None) -> float:
        """Block until the list is ``[present]`` (or empty for None); when the watch yielded it."""
        want = [present] if present else []
        with self.changed:
            if not self.changed.wait_for(lambda: self.current == want, NOTICE_TIMEOUT):
                raise TimeoutError(f"watch never showed {want}")
            return self.at

    def close(self) -> None:
        """Cancel the watch and join its thread (bounded)."""
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(5)


async def rounds_of(url: str, rounds: int) -> list[float]:
    name = f"bench-{time.time_ns()}"
    reg = from_url(url)
    assert isinstance(reg, EtcdRegistry | FileRegistry)
    watcher = Watcher(url, name)
    latencies = []
    try:
        for n in range(rounds):
            inst = Instance(id=f"i{n}", name=name, endpoints=("http://127.0.0.1:8000",))
            await reg.register(inst)
            await asyncio.to_thread(watcher.wait, inst.id)
            # Deregister at a random moment: right after a poll would always cost a full
            # poll interval, and a real stop is not in phase with any watcher.
            await asyncio.sleep(random.uniform(0, DEPHASE))
            began = time.perf_counter()
            await reg.deregister(inst)
            noticed = await asyncio.to_thread(watcher.wait, None)
            latencies.append(noticed - began)
    finally:
        watcher.close()
        await reg.aclose()
    return latencies


def show(kind: str, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    median = statistics.median(ms)
    verdict = "met" if p99 <= GOAL * 1000 else "MISSED"
    print(
        f"{kind:<6} rounds={len(ms):<4} median={median:6.2f} ms  p99={p99:6.2f} ms  "
        f"max={ms[-1]:6.2f} ms  goal p99<={GOAL * 1000:.0f} ms: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=100)
    parser.add_argument("--etcd", help="an etcd:// URL to use instead of a private etcd")
    parser.add_argument("--backend", choices=["etcd", "file", "both"], default="both")
    parser.add_argument(
        "--poll", type=float, default=DEFAULT_POLL, help="file registry poll interval"
    )
    args = parser.parse_args()
    if args.backend in ("file", "both"):
        with tempfile.TemporaryDirectory() as folder:
            url = f"file://{Path(folder)}?poll={args.poll}"
            show("file", asyncio.run(rounds_of(url, args.rounds)))
    if args.backend in ("etcd", "both"):
        if args.etcd:
            show("etcd", asyncio.run(rounds_of(args.etcd, args.rounds)))
        else:
            with local_etcd() as url:
                show("etcd", asyncio.run(rounds_of(url, args.rounds)))


if __name__ == "__main__":
    main()
