"""An App registering itself, as a real subprocess stopped by real signals (issue 4's stories).

A watcher thread in the test process sees the registry the way a client
would; its timestamps and the service's ``EVENT`` lines share the machine's
monotonic clock, so their order can be compared.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Service, free_ports
from quiesce.registry import Discovery, from_url
from scenarios.registry_service import DRAIN_DELAY

from .conftest import Cluster, Watcher, backend_url

MODULE = "tests.scenarios.registry_service"
#: The short lease TTL of these tests (etcd's minimum is about 1.5 s).
TTL = 2
Start = Callable[..., Service]
Watch = Callable[[Callable[[], Discovery], str], Watcher]


def discovery(url: str) -> Callable[[], Discovery]:
    def make() -> Discovery:
        reg = from_url(url)
        assert isinstance(reg, Discovery)
        return reg

    return make


@pytest.fixture(params=["file", "etcd"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry of the test's own with a short TTL, on each backend."""
    return backend_url(request, tmp_path, ttl=TTL, poll=0.02)


def ready(svc: Service) -> list[str]:
    """Wait for the service to be ready; its endpoints as logged at start."""
    svc.wait_for(r"EVENT ready ")
    return svc.wait_for(r"start ready .*endpoints=(\S+)").group(1).split(",")


def test_key_appears_only_after_both_servers_listen_with_both_endpoints(
    service: Start, watcher: Watch, registry_url: str
) -> None:
    w = watcher(discovery(registry_url), "orders")
    svc = service(MODULE, "two_servers", registry_url)
    endpoints = ready(svc)
    at, (inst,) = w.wait(lambda cur: len(cur) == 1)
    events = dict(svc.events())
    assert at > events["start-end a"]
    assert at > events["start-end b"]
    assert len(endpoints) == 2  # a and b
    assert sorted(inst.endpoints) == sorted(f"{e}?isSecure=false" for e in endpoints)
    assert (inst.name, inst.version, dict(inst.metadata)) == ("orders", "1.4.2", {"zone": "eu-1"})
    # Never a partial instance: every list before it was empty.
    assert all(ids == [] for ids in w.ids()[:-1])
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output


def test_sigterm_watcher_sees_delete_before_listeners_close_by_drain_delay(
    service: Start, watcher: Watch, registry_url: str
) -> None:
    w = watcher(discovery(registry_url), "orders")
    svc = service(MODULE, "drain", registry_url)
    (endpoint,) = ready(svc)
    w.wait(lambda cur: len(cur) == 1)
    seen = len(w.seen)
    svc.signal(signal.SIGTERM)
    gone_at, _ = w.wait(lambda cur: cur == [], after=seen)
    # Deregistered yet still serving: a client that has not noticed yet still gets in.
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1):
        pass
    assert svc.wait() == 0, svc.output
    closing_at = dict(svc.events())["stop-begin main"]
    assert gone_at < closing_at
    # The watcher noticed within moments of the deregistration, then the drain delay ran.
    assert closing_at - gone_at >= DRAIN_DELAY - 0.15
    assert svc.phase("deregister")["outcome"] == "ok"


def test_sigkill_instance_disappears_within_ttl(
    service: Start, watcher: Watch, registry_url: str
) -> None:
    w = watcher(discovery(registry_url), "orders")
    svc = service(MODULE, "plain", registry_url)
    ready(svc)
    w.wait(lambda cur: len(cur) == 1)
    seen = len(w.seen)
    killed = svc.signal(signal.SIGKILL)
    gone_at, _ = w.wait(lambda cur: cur == [], after=seen, timeout=TTL + 3)
    assert gone_at - killed < TTL + 1.0


def test_etcd_restarted_with_no_data_instance_is_back(
    service: Start, watcher: Watch, etcd_cluster: Callable[..., Cluster]
) -> None:
    cluster = etcd_cluster(1)
    url = cluster.url(prefix="/r", ttl=TTL)
    w = watcher(discovery(url), "orders")
    svc = service(MODULE, "plain", url)
    ready(svc)
    w.wait(lambda cur: len(cur) == 1)
    seen = len(w.seen)
    # Every key and lease lost: what a rebuilt or wiped etcd looks like.
    cluster.restart(cluster.members[0], wipe=True)
    up = time.monotonic()
    back_at, _ = w.wait(lambda cur: len(cur) == 1, after=seen, timeout=10)
    assert back_at - up < 5.0
    svc.wait_for(r"is gone .*registering again")
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0, svc.output
    assert svc.phase("deregister")["outcome"] == "ok"


def test_etcd_down_at_stop_stop_completes_on_time_and_report_says_so(
    service: Start, etcd_cluster: Callable[..., Cluster]
) -> None:
    cluster = etcd_cluster(1)
    svc = service(MODULE, "short_registry_timeout", cluster.url(prefix="/d", timeout=0.5))
    ready(svc)
    cluster.members[0].stop()
    sent = svc.signal(signal.SIGTERM)
    assert svc.wait() == 3, svc.output  # incomplete: the deregistration was cut
    assert svc.exit_time is not None
    # registry_timeout (1 s) plus the rest of a stop with nothing else to wait for.
    assert svc.exit_time - sent < 1.0 + 1.0
    phase = svc.phase("deregister")
    assert phase["outcome"] == "timeout"
    assert 0.9 <= phase["duration"] < 1.5
    assert svc.phase("stop_servers")["outcome"] == "ok"


def test_etcd_unreachable_at_start_fails_with_one_line_naming_the_registry(
    service: Start,
) -> None:
    (port,) = free_ports(1)
    url = f"etcd://127.0.0.1:{port}?timeout=0.5"
    svc = service(MODULE, "short_registry_timeout", url)
    assert svc.wait() == 1, svc.output
    errors = [line for line in svc.lines if "ERROR" in line and "start failed" in line]
    assert len(errors) == 1, svc.output
    assert url in errors[0]
    assert "Traceback" not in svc.output
    names = [what for what, _ in svc.events()]
    assert "stop-end main" in names, "the started server is stopped again"
