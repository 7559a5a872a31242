"""The gateway's upstreams in other processes: by reflection alone, and through the registry.

The gRPC instances and the gateway are real subprocesses (``bookstore_service``'s
``instance`` case, ``edge_service``); the gateway's process never imports the bookstore's
generated code, so its methods and routes come from the instances' reflection service.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from conftest import Service

INSTANCE = "tests.gateway.bookstore_service"
EDGE = "tests.gateway.edge_service"
Start = Callable[..., Service]
#: A GetBook that takes 5 ms (bookstore_service's sleepy books start at 1000).
BOOK = "/v1/shelves/1/books/1005"


async def ready(svc: Service) -> tuple[str, str]:
    """The url and the instance id ``svc`` prints once ready."""
    match = await asyncio.to_thread(svc.wait_for, r"EVENT ready (\S+) (\S+) ", 20)
    return match.group(1), match.group(2)


async def stopped(svc: Service) -> None:
    svc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(svc.wait) == 0, svc.output


async def test_gateway_resolves_a_host_port_upstream_by_reflection(
    service: Start, tmp_path: Path
) -> None:
    instance = service(INSTANCE, "instance", f"file://{tmp_path}/registry")
    target, instance_id = await ready(instance)
    edge = service(EDGE, "edge", target.removeprefix("grpc://"))
    url, _ = await ready(edge)
    async with httpx.AsyncClient(base_url=url) as client:
        got = await client.get("/v1/shelves/2/books/3")
        assert got.status_code == 200, got.text
        assert got.json()["name"] == "shelves/2/books/3"
        assert got.json()["author"]["name"] == instance_id
        # Annotated, but the servicer does not implement it: the upstream's UNIMPLEMENTED.
        missing = await client.post("/v1/shelves", json={"theme": "sea"})
        assert missing.status_code == 501, missing.text
        assert missing.json()["code"] == 12
    await stopped(edge)
    assert "PB2 False" in edge.lines, edge.output
    await stopped(instance)


@dataclass
class Load:
    """Closed-loop clients through the gateway; who answered, and what failed."""

    url: str
    answered: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seen: dict[str, asyncio.Event] = field(default_factory=dict)
    running: bool = True

    async def client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            while self.running:
                try:
                    got = await http.get(BOOK)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if got.status_code != 200:
                    self.failures.append(f"{got.status_code} {got.text}")
                    continue
                who = got.json()["author"]["name"]
                self.answered[who] = self.answered.get(who, 0) + 1
                self.event(who).set()

    def event(self, who: str) -> asyncio.Event:
        return self.seen.setdefault(who, asyncio.Event())

    async def until_answered_by(self, who: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self.event(who).wait()


async def test_gateway_follows_the_registry_through_a_rolling_restart(
    service: Start, tmp_path: Path
) -> None:
    registry = f"file://{tmp_path}/registry?poll=0.02"
    instances = [service(INSTANCE, "instance", registry) for _ in range(2)]
    ids = [(await ready(svc))[1] for svc in instances]
    edge = service(EDGE, "edge", "registry:bookstore", registry)
    url, _ = await ready(edge)

    load = Load(url)
    clients = [asyncio.create_task(load.client()) for _ in range(4)]
    try:
        for who in ids:
            await load.until_answered_by(who)
        # One by one: stop an instance (it deregisters, drains 0.3 s, stops), start a new
        # one on a new port under a new id, and wait until the gateway calls it.
        for i, old in enumerate(list(instances)):
            began = time.monotonic()
            await stopped(old)
            instances[i] = service(INSTANCE, "instance", registry)
            _, new_id = await ready(instances[i])
            await load.until_answered_by(new_id)
            ids.append(new_id)
            assert time.monotonic() - began < 15
    finally:
        load.running = False
        await asyncio.wait_for(asyncio.gather(*clients), 10)
    assert load.failures == [], load.failures[:5]
    assert set(load.answered) == set(ids), load.answered
    await stopped(edge)
    assert "PB2 False" in edge.lines, edge.output
    for svc in instances:
        await stopped(svc)
