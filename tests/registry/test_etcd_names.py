"""etcd: a service's prefix speaks only for that service; an unreachable etcd is said once."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys

import httpx
import pytest

from conftest import free_ports
from quiesce.registry import Instance, RegistryError
from quiesce.registry.etcd import EtcdRegistry

from .conftest import Cluster, ids, next_list
from .test_etcd import instance

#: Bound on the App subprocess failing its start against a closed port.
RUN_TIMEOUT = 20.0


def put_raw(etcd: Cluster, key: str, value: str) -> None:
    """What a service that skipped check_name (a Go one, an old quiesce) leaves in etcd."""
    body = {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
    }
    httpx.post(
        f"{etcd.client_url}/v3/kv/put", json=body, timeout=5, trust_env=False
    ).raise_for_status()


async def test_etcd_discovery_skips_instances_of_another_name_under_the_prefix(
    etcd: Cluster, prefix: str
) -> None:
    # "orders/admin" registered as "<prefix>/orders/admin/<id>", inside orders' prefix.
    intruder = Instance(id="x", name="orders/admin", endpoints=("http://10.6.6.6:80",))
    put_raw(etcd, f"{prefix}/orders/admin/x", intruder.to_json())
    reg = EtcdRegistry([etcd.client_url], prefix=prefix)
    try:
        await reg.register(instance("real"))
        assert ids(await reg.instances("orders")) == ["real"]
        async with reg.watch("orders") as watch:
            assert ids(await next_list(watch, lambda current: True)) == ["real"]
        await reg.deregister(instance("real"))
    finally:
        await reg.aclose()


async def test_etcd_register_unreachable_says_the_cause_once_and_traceback_only_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (port,) = free_ports(1)
    member = f"127.0.0.1:{port}"
    reg = EtcdRegistry([f"http://{member}"], request_timeout=1)
    caplog.set_level(logging.DEBUG, "quiesce.registry")
    with pytest.raises(RegistryError) as info:
        await reg.register(instance("a"))
    await reg.aclose()
    # The caller (the App) names the registry; the error names the member once.
    assert str(info.value).count(member) == 1, str(info.value)
    assert str(info.value).startswith("no etcd member answered /lease/grant: ")
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert loud == [], "the caller reports the error; the registry says nothing above DEBUG"
    (debug,) = [r for r in caplog.records if r.exc_info]
    assert debug.levelno == logging.DEBUG


def test_etcd_app_start_against_a_closed_port_names_the_member_once_per_line() -> None:
    (port,) = free_ports(1)
    member = f"127.0.0.1:{port}"
    code = (
        "import sys; from quiesce import App; "
        "App(name='x', registry=sys.argv[1], start_timeout=5).run()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, f"etcd://{member}"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "quiesce.registry" not in done.stderr, "no registry log line at start"
    lines = [line for line in done.stderr.splitlines() if "All connection attempts failed" in line]
    assert lines, done.stderr
    # Each line says where once: "registry etcd://<member> ... : <member>: <cause>" has it
    # twice (the URL and the member that failed), not three times with the repr.
    assert all(line.count(member) <= 2 for line in lines), done.stderr
    assert all("EtcdRegistry(" not in line for line in lines), done.stderr
