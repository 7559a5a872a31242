"""etcd specifics: URLs, lease loss, members going away, auth and TLS, against real etcd."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_ports
from quiesce import App, ExitCode
from quiesce.errors import ConfigError
from quiesce.registry import Instance, RegistryError, from_url, kratos_endpoint
from quiesce.registry.etcd import EtcdError, EtcdRegistry
from quiesce.registry.etcd_gateway import _b64
from quiesce.registry.file import DEFAULT_DIR, FileRegistry

from .conftest import Cluster, ids, make_tls, next_list


def instance(ident: str, name: str = "orders") -> Instance:
    return Instance(id=ident, name=name, endpoints=("http://127.0.0.1:8000",))


def has_length(n: int, current: list[Instance]) -> bool:
    return len(current) == n


# -- URLs ---------------------------------------------------------------------------


def test_from_url_etcd_parses_members_prefix_ttl_and_auth() -> None:
    reg = from_url("etcd://bob:s%40cret@10.0.0.1:2379,10.0.0.2,[::1]:2390?prefix=/ms/&ttl=4")
    assert isinstance(reg, EtcdRegistry)
    assert reg.endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://[::1]:2390"]
    assert reg.prefix == "/ms"
    assert reg.ttl == 4
    assert reg._username == "bob"
    assert reg._password == "s@cret"
    assert "s@cret" not in repr(reg)


def test_from_url_etcds_uses_https() -> None:
    reg = from_url("etcds://127.0.0.1:2379")
    assert isinstance(reg, EtcdRegistry)
    assert reg.endpoints == ["https://127.0.0.1:2379"]


def test_from_url_file_default_and_directory(tmp_path: Path) -> None:
    default = from_url("file:")
    assert isinstance(default, FileRegistry)
    assert default.directory == DEFAULT_DIR
    assert DEFAULT_DIR.name == f"quiesce-registry-{os.getuid()}", "one per user"
    custom = from_url(f"file://{tmp_path}?ttl=3&poll=0.5")
    assert isinstance(custom, FileRegistry)
    assert (custom.directory, custom.ttl, custom.poll_interval) == (tmp_path, 3.0, 0.5)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("consul://127.0.0.1:8500", "unknown registry scheme 'consul'"),
        ("127.0.0.1:2379", "unknown registry scheme"),
        ("etcd://127.0.0.1:2379?ttl=0", "ttl='0'"),
        ("etcd://127.0.0.1:2379?ttl=0.5", "at least 1 second"),
        ("etcd://127.0.0.1:2379?colour=red", "unknown option 'colour'"),
        ("etcd://127.0.0.1:2379/ms", "prefix"),
        ("etcd://127.0.0.1:99999", "bad port"),
        ("etcd://a:1,,b:2", "empty host"),
        ("etcd://127.0.0.1:2379?ca=/x.pem", "etcds://"),
        ("etcds://127.0.0.1:2379?ca=/nonexistent/ca.pem", "TLS files"),
        ("file://otherhost/x", "local"),
        ("file:///x?ttl=-1", "ttl='-1'"),
    ],
)
def test_from_url_bad_url_is_config_error_naming_it(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_url(url)
    assert str(info.value).startswith(f"registry {url!r}")
    assert message in str(info.value)


def test_from_url_error_hides_password() -> None:
    with pytest.raises(ConfigError) as info:
        from_url("etcd://bob:hunter2@127.0.0.1:2379?ttl=x")
    assert "hunter2" not in str(info.value)
    assert "bob:***@" in str(info.value)


def test_import_quiesce_does_not_import_httpx() -> None:
    code = "import sys, quiesce, quiesce.registry; sys.exit('httpx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


@pytest.mark.parametrize(
    ("endpoint", "kratos"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000?isSecure=false"),
        ("https://10.0.0.1:443", "http://10.0.0.1:443?isSecure=true"),
        ("grpc://127.0.0.1:9000", "grpc://127.0.0.1:9000?isSecure=false"),
        ("grpcs://127.0.0.1:9000", "grpc://127.0.0.1:9000?isSecure=true"),
        ("grpc://127.0.0.1:9000?isSecure=true", "grpc://127.0.0.1:9000?isSecure=true"),
    ],
)
def test_kratos_endpoint_form(endpoint: str, kratos: str) -> None:
    assert kratos_endpoint(endpoint) == kratos


# -- leases -------------------------------------------------------------------------


async def test_revoked_lease_is_replaced_and_key_put_again(
    etcd: Cluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    reg = EtcdRegistry([etcd.client_url], prefix=prefix, ttl=2)
    try:
        await reg.register(instance("a"))
        lease = reg._registrations[("orders", "a")].lease
        async with reg.watch("orders") as watch:
            assert ids(await anext(watch)) == ["a"]
            # What an etcd that lost its data looks like to the keepalive: no such lease.
            async with httpx.AsyncClient(trust_env=False) as client:
                r = await client.post(f"{etcd.client_url}/v3/lease/revoke", json={"ID": str(lease)})
            r.raise_for_status()
            await next_list(watch, lambda cur: cur == [])
            with caplog.at_level(logging.WARNING, "quiesce.registry"):
                await next_list(watch, lambda cur: ids(cur) == ["a"])
        assert reg._registrations[("orders", "a")].lease != lease
        assert any("is gone" in r.message for r in caplog.records)
        await reg.deregister(instance("a"))
        assert await reg.instances("orders") == []
    finally:
        await reg.aclose()


async def test_register_with_no_member_up_fails_naming_the_members() -> None:
    (port,) = free_ports(1)
    reg = EtcdRegistry([f"http://127.0.0.1:{port}"], request_timeout=1)
    with pytest.raises(RegistryError, match=f"127.0.0.1:{port}"):
        await reg.register(instance("a"))
    await reg.aclose()


class LostPutReply(EtcdRegistry):
    """etcd puts the key, but its answer never arrives (a partition, a stalled proxy)."""

    async def _call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        answer = await super()._call(method, body)
        if method == "/kv/put":
            await asyncio.Event().wait()
        return answer


async def test_register_cut_after_the_put_is_undone_by_deregister(
    etcd: Cluster, prefix: str
) -> None:
    reg = LostPutReply([etcd.client_url], prefix=prefix, ttl=10)
    check = EtcdRegistry([etcd.client_url], prefix=prefix)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reg.register(instance("a")), 0.5)
        assert ids(await check.instances("orders")) == ["a"], "the put landed"
        await reg.deregister(instance("a"))
        # Gone now, not when the 10 s lease runs out.
        assert await check.instances("orders") == []
    finally:
        await reg.aclose()
        await check.aclose()


async def test_app_whose_register_times_out_takes_the_instance_out_before_exiting(
    etcd: Cluster, prefix: str
) -> None:
    app = App(
        name="orders",
        registry=LostPutReply([etcd.client_url], prefix=prefix, ttl=10),
        registry_timeout=0.5,
    )
    report = await asyncio.wait_for(app.serve(), 5)
    assert report.exit_code == ExitCode.FAILED, report.to_text()
    assert "registry_timeout=0.5s" in (report.error or "")
    check = EtcdRegistry([etcd.client_url], prefix=prefix)
    try:
        assert await check.instances("orders") == [], "registered by a process that never served"
    finally:
        await check.aclose()


async def test_deregister_with_etcd_gone_gives_up_when_the_lease_has_expired(
    etcd_cluster: Callable[..., Cluster],
) -> None:
    cluster = etcd_cluster(1)
    reg = EtcdRegistry([cluster.client_url], prefix="/d", ttl=2)
    await reg.register(instance("a"))
    cluster.members[0].stop()
    began = time.monotonic()
    with pytest.raises(RegistryError, match="expired on its own"):
        await reg.deregister(instance("a"))
    # Retried for at most the rest of the lease's TTL, not forever.
    assert time.monotonic() - began < 2 + 1.0
    await reg.aclose()


# -- members ------------------------------------------------------------------------


async def test_three_member_cluster_with_one_stopped_keeps_registering_and_watching(
    etcd_cluster: Callable[..., Cluster],
) -> None:
    cluster = etcd_cluster(3)
    url = cluster.url(prefix="/c", ttl=2)
    reg, watcher = from_url(url), from_url(url)
    assert isinstance(reg, EtcdRegistry)
    assert isinstance(watcher, EtcdRegistry)
    try:
        await reg.register(instance("a"))
        async with watcher.watch("orders") as watch:
            assert ids(await anext(watch)) == ["a"]
            # The first listed member is the one both talk to: stop it under them.
            cluster.members[0].stop()
            await reg.register(instance("b"))
            await next_list(watch, lambda cur: ids(cur) == ["a", "b"])
            # Keepalives go on through the others for longer than the TTL.
            deadline = time.monotonic() + 2 + 0.5
            while time.monotonic() < deadline:
                assert ids(await reg.instances("orders")) == ["a", "b"]
                await asyncio.sleep(0.5)
            await reg.deregister(instance("a"))
            await next_list(watch, lambda cur: ids(cur) == ["b"])
            await reg.deregister(instance("b"))
            await next_list(watch, lambda cur: cur == [])
    finally:
        await reg.aclose()
        await watcher.aclose()


async def test_auth_token_is_used_and_a_wrong_password_is_refused(
    etcd_cluster: Callable[..., Cluster],
) -> None:
    cluster = etcd_cluster(1)
    api = cluster.client_url + "/v3/auth"
    async with httpx.AsyncClient(trust_env=False) as client:
        for method, body in [
            ("/role/add", {"name": "root"}),
            ("/user/add", {"name": "root", "password": "pw"}),
            ("/user/grant", {"user": "root", "role": "root"}),
            ("/enable", {}),
        ]:
            (await client.post(api + method, json=body)).raise_for_status()
    hosts = cluster.hosts
    reg = from_url(f"etcd://root:pw@{hosts}?prefix=/auth&ttl=2")
    assert isinstance(reg, EtcdRegistry)
    try:
        await reg.register(instance("a"))
        async with reg.watch("orders") as watch:
            assert ids(await anext(watch)) == ["a"]
            # A token that etcd no longer knows (expired, or another member's) is renewed.
            reg._tokens = {k: "stale-token" for k in reg._tokens}
            async with reg.watch("orders") as second:
                assert ids(await next_list(second, lambda cur: True)) == ["a"]
            reg._tokens = {k: "stale-token" for k in reg._tokens}
            await reg.deregister(instance("a"))
            await next_list(watch, lambda cur: cur == [])
    finally:
        await reg.aclose()
    wrong = from_url(f"etcd://root:nope@{hosts}")
    with pytest.raises(EtcdError, match="authentication failed"):
        await wrong.register(instance("a"))
    assert isinstance(wrong, EtcdRegistry)
    await wrong.aclose()


async def test_etcds_with_a_private_ca(
    etcd_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    tls = make_tls(tmp_path / "tls")
    cluster = etcd_cluster(1, tls)
    reg = from_url(f"etcds://{cluster.hosts}?ca={tls.ca}&prefix=/tls")
    assert isinstance(reg, EtcdRegistry)
    try:
        await reg.register(instance("a"))
        assert ids(await reg.instances("orders")) == ["a"]
        await reg.deregister(instance("a"))
    finally:
        await reg.aclose()
    untrusted = from_url(f"etcds://{cluster.hosts}")
    with pytest.raises(RegistryError, match="no etcd member answered"):
        await untrusted.register(instance("a"))
    assert isinstance(untrusted, EtcdRegistry)
    await untrusted.aclose()


async def test_values_are_base64_json_under_the_kratos_key(etcd: Cluster, prefix: str) -> None:
    reg = EtcdRegistry([etcd.client_url], prefix=prefix)
    try:
        await reg.register(instance("k1"))
        key = base64.b64encode(f"{prefix}/orders/k1".encode()).decode()
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.post(f"{etcd.client_url}/v3/kv/range", json={"key": key})
        (kv,) = r.json()["kvs"]
        assert int(kv["lease"]) == reg._registrations[("orders", "k1")].lease
        assert base64.b64decode(kv["value"]).startswith(b'{"id":"k1","name":"orders"')
        await reg.deregister(instance("k1"))
    finally:
        await reg.aclose()


async def test_keep_registered_while_etcd_is_down_registers_once_it_is_up(
    etcd_cluster: Callable[..., Cluster],
) -> None:
    cluster = etcd_cluster(1)
    member = cluster.members[0]
    reg = EtcdRegistry([member.client_url], prefix="/k", ttl=2)
    member.stop()
    try:
        reg.keep_registered(instance("a"))  # never raises: serve now, register when possible
        with pytest.raises(RegistryError):
            await reg.instances("orders")
        member.start(cluster.initial_cluster)
        await asyncio.to_thread(cluster.wait_healthy)
        async with reg.watch("orders") as watch:
            await next_list(watch, lambda cur: ids(cur) == ["a"])
            await reg.deregister(instance("a"))
            await next_list(watch, lambda cur: cur == [])
    finally:
        await reg.aclose()


async def test_watch_relists_periodically_and_misses_nothing(etcd: Cluster, prefix: str) -> None:
    watcher = EtcdRegistry([etcd.client_url], prefix=prefix, relist_interval=0.2)
    reg = EtcdRegistry([etcd.client_url], prefix=prefix)
    try:
        async with watcher.watch("orders") as watch:
            assert await anext(watch) == []
            for n in range(5):
                # Changes land before, during and after the re-lists (every 0.15-0.2 s).
                await reg.register(instance(f"i{n}"))
                await next_list(watch, functools.partial(has_length, n + 1))
                await asyncio.sleep(0.1)
            await reg.deregister(instance("i0"))
            await next_list(watch, lambda cur: ids(cur) == ["i1", "i2", "i3", "i4"])
        for n in range(1, 5):
            await reg.deregister(instance(f"i{n}"))
    finally:
        await reg.aclose()
        await watcher.aclose()


async def test_watch_cancelled_by_compaction_relists_and_sees_what_it_missed(
    etcd: Cluster, prefix: str
) -> None:
    other = EtcdRegistry([etcd.client_url], prefix=prefix)

    class CompactsAfterFirstList(EtcdRegistry):
        """Fault injection: compacts etcd between the first range and the watch."""

        compacted = False

        async def _range(self, key: bytes) -> tuple[dict[str, bytes], int]:
            found = await super()._range(key)
            if not self.compacted:
                self.compacted = True
                # A change the watch must not miss, then history compacted past it.
                await other.register(instance("late"))
                async with httpx.AsyncClient(trust_env=False) as client:
                    unrelated = {"key": _b64(f"{prefix}-other"), "value": _b64("x")}
                    head = await client.post(f"{etcd.client_url}/v3/kv/put", json=unrelated)
                    revision = head.json()["header"]["revision"]
                    r = await client.post(
                        f"{etcd.client_url}/v3/kv/compaction", json={"revision": revision}
                    )
                    r.raise_for_status()
            return found

    watcher = CompactsAfterFirstList([etcd.client_url], prefix=prefix)
    try:
        async with watcher.watch("orders") as watch:
            assert await anext(watch) == []  # listed before "late" was put
            await next_list(watch, lambda cur: ids(cur) == ["late"])
        assert watcher.compacted
        await other.deregister(instance("late"))
    finally:
        await other.aclose()
        await watcher.aclose()
