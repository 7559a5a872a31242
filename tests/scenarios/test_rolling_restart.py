"""Issue 4, story 5: a rolling restart under load loses no request.

Three instances of ``orders`` (real subprocesses, embedded uvicorn, a drain
delay of 1 s, or an adaptive drain that ends once traffic stops) registered
in a file registry or in etcd; the discovery client sends GETs and POSTs
from concurrent workers while each instance in turn is stopped with SIGTERM,
exits 0, starts again under a new id and is back in the registry. Every
request must succeed.

Why nothing fails: the App deregisters before its drain delay and keeps
serving through it; the client's watch drops the instance within
milliseconds (etcd) or one poll (file, 20 ms here), long before the listener
closes; requests already sent finish during the drain; a connection refused
at the wrong moment would be retried on another instance.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conftest import Service
from quiesce.client import AsyncClient
from quiesce.process import new_event_loop
from quiesce.registry import Discovery, from_url
from registry.conftest import Cluster, Watcher

MODULE = "tests.scenarios.rolling_service"
Start = Callable[..., Service]
#: Bounds: an instance's stop (drain 1 s + in-flight), its start, a registry notice.
EXIT_TIMEOUT = 15.0
READY_TIMEOUT = 20.0
NOTICE_TIMEOUT = 10.0


@pytest.fixture(params=["file", "etcd"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A registry of the test's own: a file directory (polled every 20 ms), or a private etcd."""
    if request.param == "file":
        yield f"file://{tmp_path}/registry?poll=0.02"
        return
    cluster = Cluster(tmp_path / "etcd")
    try:
        yield cluster.url(prefix="/rolling")
    finally:
        cluster.close()


@dataclass
class Load:
    """``clients`` workers sending GET and POST through one discovery client, in a thread."""

    url: str
    clients: int
    answered: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "the load did not stop"

    @property
    def total(self) -> int:
        return sum(self.answered.values()) + len(self.failures)

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        async with AsyncClient(service="orders", registry=self.url) as client:
            await asyncio.gather(*(self._worker(client, n) for n in range(self.clients)))

    async def _worker(self, client: httpx.AsyncClient, n: int) -> None:
        sent = 0
        while not self._stop.is_set():
            sent += 1
            method = "POST" if (n + sent) % 2 else "GET"
            try:
                response = await client.request(method, "/orders", content=b'{"sku": "A-1"}')
            except httpx.HTTPError as exc:
                self.failures.append(f"{method}: {type(exc).__name__}: {exc}")
                continue
            if response.status_code != 200:
                self.failures.append(f"{method}: HTTP {response.status_code}")
                continue
            self.answered[response.text] = self.answered.get(response.text, 0) + 1


def discovery(url: str) -> Callable[[], Discovery]:
    def make() -> Discovery:
        registry = from_url(url)
        assert isinstance(registry, Discovery)
        return registry

    return make


#: The drains of the short test: the fixed delay, and an adaptive one.
DRAINS = {"fixed": "1.0", "adaptive": "min=0.5,max=5,idle=0.3"}


def start_instance(service: Start, watcher: Watcher, url: str, name: str, drain: str) -> Service:
    """Start an instance and wait until the registry lists it."""
    svc = service(MODULE, name, url, drain)
    svc.wait_for(rf"READY {name}$", timeout=READY_TIMEOUT)
    watcher.wait(lambda current: name in [i.id for i in current], timeout=NOTICE_TIMEOUT)
    return svc


def rolling_restart(
    service: Start, url: str, *, clients: int, duration: float, drain: str = DRAINS["fixed"]
) -> None:
    watcher = Watcher(discovery(url), "orders")
    load = Load(url, clients)
    try:
        instances = [start_instance(service, watcher, url, f"i{n}-0", drain) for n in range(3)]
        began = time.monotonic()
        load.start()
        # Steady load first, then the restarts a quarter of the run apart (back to back when
        # a restart takes longer), then steady load again until the end.
        for n in range(3):
            time.sleep(max(0.0, began + duration / 8 + n * duration / 4 - time.monotonic()))
            old = instances[n]
            old.signal(signal.SIGTERM)
            assert old.wait(EXIT_TIMEOUT) == 0, old.output[-3000:]
            assert old.phase("stop_servers")["outcome"] == "ok", old.report()
            # An adaptive drain ends once the clients have moved away, well before its max.
            ended = old.phase("drain")["note"]
            assert ended.startswith("idle after ") if "=" in drain else ended == "fixed", ended
            instances[n] = start_instance(service, watcher, url, f"i{n}-1", drain)
        # Until the end of the run, and long enough for the last new instance to serve.
        time.sleep(max(duration / 8, began + duration - time.monotonic()))
    finally:
        load.stop()
        watcher.close()
    for svc in instances:
        svc.signal(signal.SIGTERM)
    for svc in instances:
        assert svc.wait(EXIT_TIMEOUT) == 0, svc.output[-3000:]
    print(f"{load.total} requests, {len(load.failures)} failed: {sorted(load.answered.items())}")
    assert load.failures == []
    # Every instance served, the three old ones before their stop, the new ones after start.
    assert set(load.answered) == {f"i{n}-{gen}" for n in range(3) for gen in (0, 1)}


@pytest.mark.parametrize("drain", DRAINS)
def test_rolling_restart_short_loses_no_request(
    service: Start, registry_url: str, drain: str
) -> None:
    rolling_restart(service, registry_url, clients=10, duration=4.0, drain=DRAINS[drain])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rolling_restart_50_clients_20s_loses_no_request(service: Start, registry_url: str) -> None:
    rolling_restart(service, registry_url, clients=50, duration=20.0)
