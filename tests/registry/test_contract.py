"""One contract, every backend: the file registry and etcd behave the same to App and clients."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from quiesce.registry import Discovery, Instance, Registry
from quiesce.registry.etcd import EtcdRegistry
from quiesce.registry.file import FileRegistry

from .conftest import Cluster, ids, next_list

#: A short TTL keeps the expiry tests quick; etcd's own minimum is about 1.5 s.
TTL = 2.0
#: Bound on a watch noticing a change in these tests (generous for a loaded CI machine).

Backend = FileRegistry | EtcdRegistry


@dataclass
class Store:
    """A backend under test, and a way to look at or damage what it stored behind its back."""

    kind: str
    make: Callable[[], Backend]
    raw: Callable[[Instance], dict[str, object] | None]
    delete_raw: Callable[[Instance], None]
    key_of: Callable[[Instance], str]


def _file_store(tmp_path: Path) -> Store:
    def path(i: Instance) -> Path:
        return tmp_path / i.name / f"{i.id}.json"

    def raw(i: Instance) -> dict[str, object] | None:
        p = path(i)
        return json.loads(p.read_text()) if p.exists() else None

    return Store(
        "file",
        lambda: FileRegistry(tmp_path, ttl=TTL, poll_interval=0.02),
        raw,
        lambda i: path(i).unlink(),
        lambda i: str(path(i).relative_to(tmp_path)),
    )


def _etcd_store(etcd: Cluster, prefix: str) -> Store:
    def call(method: str, body: dict[str, object]) -> dict[str, object]:
        r = httpx.post(f"{etcd.client_url}/v3{method}", json=body, timeout=5, trust_env=False)
        r.raise_for_status()
        data: dict[str, object] = r.json()
        return data

    def key(i: Instance) -> str:
        return f"{prefix}/{i.name}/{i.id}"

    def raw(i: Instance) -> dict[str, object] | None:
        answer = call("/kv/range", {"key": base64.b64encode(key(i).encode()).decode()})
        kvs = answer.get("kvs")
        if not isinstance(kvs, list) or not kvs:
            return None
        data: dict[str, object] = json.loads(base64.b64decode(kvs[0]["value"]))
        return data

    def delete_raw(i: Instance) -> None:
        call("/kv/deleterange", {"key": base64.b64encode(key(i).encode()).decode()})

    return Store(
        "etcd",
        lambda: EtcdRegistry([etcd.client_url], prefix=prefix, ttl=TTL),
        raw,
        delete_raw,
        key,
    )


@pytest.fixture(params=["file", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return _file_store(tmp_path)
    etcd: Cluster = request.getfixturevalue("etcd")
    prefix: str = request.getfixturevalue("prefix")
    return _etcd_store(etcd, prefix)


@pytest.fixture
async def registry(store: Store) -> AsyncIterator[Backend]:
    reg = store.make()
    yield reg
    await reg.aclose()


def instance(ident: str, name: str = "orders") -> Instance:
    return Instance(
        id=ident,
        name=name,
        version="1.4.2",
        metadata={"zone": "eu-1"},
        endpoints=("http://127.0.0.1:8000", "grpc://127.0.0.1:9000"),
    )


def test_backends_implement_both_protocols(tmp_path: Path) -> None:
    # Typing pins them (mypy checks these assignments); runtime_checkable double-checks.
    file_registry: Registry = FileRegistry(tmp_path)
    file_discovery: Discovery = FileRegistry(tmp_path)
    etcd_registry: Registry = EtcdRegistry()
    etcd_discovery: Discovery = EtcdRegistry()
    for reg in (file_registry, file_discovery, etcd_registry, etcd_discovery):
        assert isinstance(reg, Registry)
        assert isinstance(reg, Discovery)


async def test_register_makes_instance_visible_in_list_and_watch(registry: Backend) -> None:
    async with registry.watch("orders") as watch:
        assert await anext(watch) == []
        await registry.register(instance("a"))
        seen = await next_list(watch, lambda cur: ids(cur) == ["a"])
    listed = await registry.instances("orders")
    assert listed == seen
    (got,) = listed
    assert got.version == "1.4.2"
    assert dict(got.metadata) == {"zone": "eu-1"}
    assert list(got.endpoints) == [
        "http://127.0.0.1:8000?isSecure=false",
        "grpc://127.0.0.1:9000?isSecure=false",
    ]
    await registry.deregister(instance("a"))


async def test_deregister_removes_instance_from_list_and_watch(registry: Backend) -> None:
    await registry.register(instance("a"))
    await registry.register(instance("b"))
    async with registry.watch("orders") as watch:
        assert ids(await anext(watch)) == ["a", "b"]
        await registry.deregister(instance("a"))
        await next_list(watch, lambda cur: ids(cur) == ["b"])
        await registry.deregister(instance("b"))
        await next_list(watch, lambda cur: cur == [])
    assert await registry.instances("orders") == []


async def test_watch_sees_each_add_and_remove_in_order(registry: Backend, store: Store) -> None:
    other = store.make()  # a second process's registry, sharing the store
    try:
        async with registry.watch("orders") as watch:
            assert await anext(watch) == []
            await other.register(instance("b"))
            await next_list(watch, lambda cur: ids(cur) == ["b"])
            await registry.register(instance("a"))
            await next_list(watch, lambda cur: ids(cur) == ["a", "b"])
            await other.deregister(instance("b"))
            await next_list(watch, lambda cur: ids(cur) == ["a"])
            await registry.deregister(instance("a"))
            await next_list(watch, lambda cur: cur == [])
    finally:
        await other.aclose()


async def test_watch_of_foo_does_not_see_foobar(registry: Backend) -> None:
    await registry.register(instance("x", name="foobar"))
    await registry.register(instance("y", name="foo"))
    assert ids(await registry.instances("foo")) == ["y"]
    async with registry.watch("foo") as watch:
        assert ids(await anext(watch)) == ["y"]
    await registry.deregister(instance("x", name="foobar"))
    await registry.deregister(instance("y", name="foo"))


async def test_stored_in_kratos_key_layout_and_json(registry: Backend, store: Store) -> None:
    await registry.register(instance("host-1-abc"))
    data = store.raw(instance("host-1-abc"))
    assert data == {
        "id": "host-1-abc",
        "name": "orders",
        "version": "1.4.2",
        "metadata": {"zone": "eu-1"},
        "endpoints": [
            "http://127.0.0.1:8000?isSecure=false",
            "grpc://127.0.0.1:9000?isSecure=false",
        ],
    }
    key = store.key_of(instance("host-1-abc"))
    assert key.endswith("orders/host-1-abc" + (".json" if store.kind == "file" else ""))
    await registry.deregister(instance("host-1-abc"))
    assert store.raw(instance("host-1-abc")) is None


async def test_instance_of_a_dead_process_disappears_after_ttl(
    registry: Backend, store: Store
) -> None:
    dead = store.make()
    await dead.register(instance("dead"))
    async with registry.watch("orders") as watch:
        assert ids(await anext(watch)) == ["dead"]
        await dead.aclose()  # stops the heartbeat without deregistering: a SIGKILL
        stopped = time.monotonic()
        await next_list(watch, lambda cur: cur == [])
        gone_after = time.monotonic() - stopped
    assert gone_after < TTL + 1.0


async def test_deleted_instance_is_written_again_by_its_owner(
    registry: Backend, store: Store
) -> None:
    await registry.register(instance("a"))
    async with registry.watch("orders") as watch:
        assert ids(await anext(watch)) == ["a"]
        store.delete_raw(instance("a"))
        await next_list(watch, lambda cur: cur == [])
        # The owner's next heartbeat (every ttl/3) puts it back.
        await next_list(watch, lambda cur: ids(cur) == ["a"])
    await registry.deregister(instance("a"))


async def test_deregister_unknown_instance_is_a_no_op(registry: Backend) -> None:
    await registry.deregister(instance("never"))
    assert await registry.instances("orders") == []
