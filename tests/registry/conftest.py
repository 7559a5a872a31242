"""Real etcd for the registry tests: found on PATH or installed from Debian, run on free ports.

Nothing is mocked. ``etcd`` is one member shared by a test module's tests
(each test uses its own key prefix); ``etcd_cluster`` starts members a test
may stop, kill, wipe and restart. A system etcd that the Debian package may
have started on 2379 is never used: every member here listens on free
loopback ports with its own data directory.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_ports
from debian import installed
from quiesce.registry import Discovery, Instance, Watch

#: Bound on a member (or a whole cluster) answering /health after it was started.
HEALTH_TIMEOUT = 20.0
#: Bound on a member exiting after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


def etcd_binary() -> str:
    """The etcd executable, installed (Debian's etcd-server) once per test session if missing."""
    return installed("etcd", "etcd-server")


def backend_url(
    request: pytest.FixtureRequest, tmp_path: Path, *, poll: float = 0.01, **options: Any
) -> str:
    """A registry URL of the test's own on backend ``request.param`` (``file`` or ``etcd``).

    ``options`` go to the URL's query on both backends; ``poll`` only to the
    file registry's (etcd pushes, it does not poll).
    """
    if request.param == "file":
        query = "&".join(f"{k}={v}" for k, v in {**options, "poll": poll}.items())
        return f"file://{tmp_path}/registry?{query}"
    etcd: Cluster = request.getfixturevalue("etcd")
    prefix: str = request.getfixturevalue("prefix")
    return etcd.url(prefix=prefix, **options)


@dataclass(frozen=True)
class TLS:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path) -> TLS:
    """A throwaway CA and a server certificate for IP 127.0.0.1, made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca-key.pem"
    cert, key, csr = folder / "server.pem", folder / "server-key.pem", folder / "server.csr"
    ext = folder / "ext.cnf"
    # The extensions Python 3.13's strict verification (VERIFY_X509_STRICT) insists on.
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca_ext += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    ca_req = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", *ca_ext]
    csr_req = ["req", "-newkey", "rsa:2048", "-nodes"]
    sign = ["x509", "-req", "-days", "2", "-CAcreateserial", "-extfile", str(ext)]
    steps = [
        [*ca_req, "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=quiesce test CA"],
        [*csr_req, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"],
        [*sign, "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-out", str(cert)],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], check=True, capture_output=True, timeout=30)
    return TLS(ca, cert, key)


class Member:
    """One etcd member process on loopback ports, with its own data directory."""

    def __init__(
        self, name: str, workdir: Path, client_port: int, peer_port: int, tls: TLS | None = None
    ) -> None:
        self.name = name
        self.tls = tls
        self.data_dir = workdir / f"{name}.data"
        self.log_path = workdir / f"{name}.log"
        self.client_port = client_port
        self.peer_port = peer_port
        scheme = "https" if tls else "http"
        self.client_url = f"{scheme}://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, initial_cluster: str, state: str = "new") -> None:
        env = dict(os.environ)
        if platform.machine() in ("aarch64", "arm64"):
            env["ETCD_UNSUPPORTED_ARCH"] = "arm64"  # 3.4 refuses to start on arm64 without it
        args = [
            etcd_binary(),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            state,
        ]
        if self.tls is not None:
            args += ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the member (SIGTERM, or SIGKILL) and wait for it to exit, bounded."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wipe(self) -> None:
        """Delete the member's data: on restart it has lost every key and lease."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def healthy(self) -> bool:
        try:
            verify: ssl.SSLContext | bool = True
            if self.tls is not None:
                verify = ssl.create_default_context(cafile=str(self.tls.ca))
            r = httpx.get(self.client_url + "/health", timeout=1.0, trust_env=False, verify=verify)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json().get("health") == "true"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class Cluster:
    """``size`` members started as one new cluster; stop/restart members during a test."""

    def __init__(self, workdir: Path, size: int = 1, tls: TLS | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * size)
        self.members = [
            Member(f"m{i}", workdir, ports[2 * i], ports[2 * i + 1], tls) for i in range(size)
        ]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for m in self.members:
                m.start(self.initial_cluster)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def url(self, **options: Any) -> str:
        """``etcd://`` URL over every member, with query options."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"etcd://{self.hosts}" + (f"?{query}" if query else "")

    @property
    def client_url(self) -> str:
        """The client URL of the first running member."""
        return next(m.client_url for m in self.members if m.running)

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        """Wait until every running member answers /health (a leader is elected)."""
        deadline = time.monotonic() + timeout
        running = [m for m in self.members if m.running]
        while time.monotonic() < deadline:
            dead = [m for m in running if not m.running]
            if dead:
                break
            if all(m.healthy() for m in running):
                return
            time.sleep(0.05)
        logs = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in running)
        raise AssertionError(f"etcd not healthy within {timeout}s:\n{logs}")

    def restart(self, member: Member, *, wipe: bool = False) -> None:
        """Stop ``member`` and start it again on the same ports (optionally with no data)."""
        member.stop()
        if wipe:
            member.wipe()
        member.start(self.initial_cluster)
        self.wait_healthy()

    def close(self) -> None:
        for m in self.members:
            m.stop()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A one-member etcd shared by a module's tests; use :func:`prefix` to keep them apart."""
    cluster = Cluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.close()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start a private cluster of ``size`` members for a test that stops or restarts them."""
    started: list[Cluster] = []

    def start(size: int = 1, tls: TLS | None = None) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(started)}", size, tls)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"/quiesce-test-{uuid.uuid4().hex[:10]}"


class Watcher:
    """Watch a service from a thread of its own; the test waits on what it saw.

    Subprocess tests block on the service's output, so the watch runs in a
    separate event loop; every list it yields is kept with the monotonic time
    it arrived.
    """

    def __init__(self, make: Callable[[], Discovery], name: str) -> None:
        self.seen: list[tuple[float, list[Instance]]] = []
        self._cond = threading.Condition()
        self._make = make
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.wait(lambda _: True)  # the first list: the watch is established

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._watch())
        try:
            self._loop.run_until_complete(self._task)
        except BaseException as exc:
            self._error = exc
        finally:
            self._loop.close()
            with self._cond:
                self._cond.notify_all()

    async def _watch(self) -> None:
        registry = self._make()
        try:
            async with registry.watch(self._name) as watch:
                async for current in watch:
                    with self._cond:
                        self.seen.append((time.monotonic(), current))
                        self._cond.notify_all()
        finally:
            close = getattr(registry, "aclose", None)
            if close is not None:
                await close()

    def wait(
        self, predicate: Callable[[list[Instance]], bool], timeout: float = 10.0, after: int = 0
    ) -> tuple[float, list[Instance]]:
        """The first list from index ``after`` matching ``predicate``, within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, current in self.seen[after:]:
                    if predicate(current):
                        return at, current
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(
                        f"watch of {self._name!r} saw no matching list in {timeout}s "
                        f"(error: {self._error!r}); seen: {self.seen}"
                    )
                self._cond.wait(left)

    def ids(self, after: int = 0) -> list[list[str]]:
        with self._cond:
            return [[i.id for i in current] for _, current in self.seen[after:]]

    def close(self) -> None:
        task = self._task
        if task is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout=5)


@pytest.fixture
def watcher() -> Iterator[Callable[[Callable[[], Discovery], str], Watcher]]:
    """Start :class:`Watcher` threads; all are stopped at the end of the test."""
    started: list[Watcher] = []

    def start(make: Callable[[], Discovery], name: str) -> Watcher:
        w = Watcher(make, name)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Install etcd at collection when a selected test needs it.

    On a fresh machine ``apt-get install`` takes longer than one test's
    timeout may allow; done here, it is outside every test's timeout.
    """
    needs = {"etcd", "etcd_cluster"}
    if any(needs & set(getattr(item, "fixturenames", ())) for item in items):
        etcd_binary()


#: Bound on a watch reporting a change (far above the milliseconds it takes).
NOTICE = 5.0


async def next_list(watch: Watch, predicate: Callable[[list[Instance]], bool]) -> list[Instance]:
    """The next list from ``watch`` matching ``predicate``, within :data:`NOTICE`."""
    async with asyncio.timeout(NOTICE):
        async for current in watch:
            if predicate(current):
                return current
    raise AssertionError("watch ended")


def ids(current: list[Instance]) -> list[str]:
    """The instance ids of a watched list."""
    return [i.id for i in current]
