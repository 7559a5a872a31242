"""The drill's course: start the service, load it, signal it, keep the load on, judge.

With one instance::

    start, ready ── load ──────────────────────────────────────────── duration
                         SIGTERM at signal_at ── the stop ── exit

With several (``instances``), on a registry, the load through the discovery
client: at ``signal_at`` each instance in turn gets SIGTERM, exits, and is
replaced by a new one on a new port, which must become ready before the next
is stopped (a rolling restart). The load runs for ``duration`` and at least
:data:`TAIL` seconds past the last replacement, so that every stop is under
load; the replacements are stopped after the load, unjudged.

Every wait is bounded: readiness by ``ready_timeout``, each exit by
``exit_timeout`` (then SIGKILL, and the verdict says so), each request by
``request_timeout``. Whatever happens, nothing the drill started outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import httpx

from quiesce.client import AsyncClient
from quiesce.drill.load import Load
from quiesce.drill.notice import LateDiscovery
from quiesce.drill.options import DrillOptions
from quiesce.drill.progress import Progress
from quiesce.drill.service import (
    DrillError,
    Launch,
    Service,
    free_port,
    kill_all,
    register,
    start,
    terminate,
    wait_exit,
    wait_ready,
    withdraw,
)
from quiesce.drill.verdict import Verdict, judge
from quiesce.errors import ConfigError
from quiesce.registry import Discovery, from_url

if TYPE_CHECKING:
    from quiesce.registry.etcd import EtcdRegistry
    from quiesce.registry.file import FileRegistry

__all__ = ["TAIL", "DrillOptions", "run_drill"]

#: Seconds the load goes on after the last replacement is ready (several instances).
TAIL = 0.5
#: The private registry's poll: quick, so that the notice delay is what clients wait.
_PRIVATE_POLL = 0.02


async def run_drill(options: DrillOptions, progress: TextIO | None = None) -> Verdict:
    """Drill the service as ``options`` say; the live progress goes to ``progress``.

    Raises:
        ConfigError: a bad option found only now (a path the service does not serve),
            or the service exited 2 (its own bad configuration) before it was ready.
        DrillError: the service never became ready, or a registry call failed.

    """
    # Owner-only (mkdtemp makes it 0700): reports, service output and the registry.
    workdir = Path(tempfile.mkdtemp(prefix="quiesce-drill-"))
    try:
        return await _Drill(options, workdir).run(progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Drill:
    def __init__(self, options: DrillOptions, workdir: Path) -> None:
        self.options = options
        self.launch = Launch(options.target, options.command, options.path, workdir)
        self.phase = "starting"
        self.started: list[Service] = []
        #: The stops the verdict judges, in order.
        self.stops: list[Service] = []
        self.problems: list[str] = []
        self.registry: FileRegistry | EtcdRegistry | None = None
        self.load: Load | None = None

    async def run(self, stream: TextIO | None) -> Verdict:
        progress = None
        if stream is not None:
            progress = Progress(stream, self._counts, lambda: self.phase, self._began)
            progress.start()
        try:
            if self.options.instances > 1:
                await self._rolling()
            else:
                await self._single()
        finally:
            if self.load is not None and self.load.ended is None:
                await self.load.stop()  # interrupted: the clients go before the services
            if progress is not None:
                await progress.close()
            await kill_all(self.started)
            if self.registry is not None:
                # Interrupted: what the drill registered must not outlive it in a shared
                # registry (a private one goes with its directory anyway).
                for service in self.started:
                    with contextlib.suppress(DrillError):
                        await withdraw(service, self.registry)
                await self.registry.aclose()
        assert self.load is not None
        assert self.load.ended is not None
        t0 = self.load.began
        exits = [s.exited - t0 for s in self.stops if s.exited is not None]
        return judge(
            settings=self.options.settings(),
            samples=self.load.samples,
            examples=self.load.examples,
            stops=[s.stop() for s in self.stops],
            t0=t0,
            span=max([self.load.ended - t0, *exits]),
            problems=self.problems,
            exit_timeout=self.options.exit_timeout,
            writes_report=self.launch.writes_report,
        )

    def _counts(self) -> tuple[int, int]:
        return (self.load.completed, self.load.failed) if self.load else (0, 0)

    def _began(self) -> float:
        return self.load.began if self.load else 0.0

    # -- one instance ---------------------------------------------------------------

    async def _single(self) -> None:
        o = self.options
        service = await self._start("i0", check_path=True)
        self.load = Load.direct(
            service.endpoint,
            o.path,
            clients=o.clients,
            timeout=o.request_timeout,
            retries=o.retries,
        )
        t0 = self.load.start()
        self.stops.append(service)
        exiting = None
        if not await self._exits_before(service, t0 + o.signal_at):
            self.phase = f"{service.label}: stopping (SIGTERM sent)"
            await terminate(service, None)
            exiting = asyncio.create_task(self._exit(service))
        await _sleep_until(t0 + o.duration)
        await self.load.stop()
        if exiting is not None:
            await exiting

    # -- several instances --------------------------------------------------------

    async def _rolling(self) -> None:
        o = self.options
        url = o.registry or f"file://{self.launch.workdir}/registry?poll={_PRIVATE_POLL}"
        name = f"drill-{uuid.uuid4().hex[:8]}"
        self.launch = replace(self.launch, registry=url, name=name)
        self.registry = registry = from_url(url)
        current = await self._start_all([f"i{n}" for n in range(o.instances)])
        await self._listed(registry, name, o.instances)
        late = LateDiscovery(registry, o.notice_delay)
        client = AsyncClient(
            service=name,
            registry=late,
            retries=o.retries,
            timeout=o.request_timeout,
            limits=httpx.Limits(max_connections=o.clients * 2, max_keepalive_connections=o.clients),
            trust_env=False,
        )
        self.load = Load.discovery(
            client, o.path, clients=o.clients, timeout=o.request_timeout, retries=o.retries
        )
        t0 = self.load.start()
        await _sleep_until(t0 + o.signal_at)
        for n, old in enumerate(current):
            self.stops.append(old)
            if old.ended.done():  # it exited on its own before its turn: judged so
                old.read_report(self.launch)
            else:
                self.phase = f"{old.label}: stopping (SIGTERM sent)"
                await terminate(old, registry)
                await self._exit(old)
            try:
                current[n] = await self._start(f"i{n}.1")
                # The next stop waits until the clients can send to the replacement, as a
                # rollout waits for the new pod: else the drill, not the service, drops them.
                await self._noticed(late, current[n])
            except (DrillError, ConfigError) as exc:
                self.problems.append(f"the rolling restart stopped: {exc}")
                break
        self.phase = "restarted; load goes on"
        await _sleep_until(max(t0 + o.duration, time.monotonic() + TAIL))
        await self.load.stop()
        self.phase = "stopping the replacements"
        await asyncio.gather(*(self._retire(s) for s in current if s not in self.stops))

    async def _start_all(self, labels: list[str]) -> list[Service]:
        results = await asyncio.gather(
            *(self._start(label, check_path=n == 0) for n, label in enumerate(labels)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, Service)]

    async def _listed(self, registry: Discovery, name: str, count: int) -> None:
        """Wait until the registry lists ``count`` instances of ``name`` (bounded)."""
        timeout = self.options.ready_timeout
        try:
            async with asyncio.timeout(timeout), registry.watch(name) as watch:
                async for instances in watch:
                    if len(instances) >= count:
                        return
        except TimeoutError:
            raise DrillError(
                f"the registry did not list {count} instances of {name!r} within {timeout:g}s "
                "(--ready-timeout): do the instances register under the name they are given?"
            ) from None

    async def _noticed(self, late: LateDiscovery, service: Service) -> None:
        self.phase = f"{service.label}: ready, waiting for the clients to notice it"
        timeout = self.options.ready_timeout + self.options.notice_delay
        try:
            async with asyncio.timeout(timeout):
                await late.until_delivered(service.port)
        except TimeoutError:
            raise DrillError(
                f"{service.label}: the clients did not see it in the registry within "
                f"{timeout:g}s (--ready-timeout + --notice-delay)"
            ) from None
        self.phase = f"{service.label}: serving"

    async def _retire(self, service: Service) -> None:
        if service.ended.done():
            # It was serving the load's tail and exited on its own: that is a stop to judge.
            self.stops.append(service)
            service.read_report(self.launch)
            return
        await terminate(service, self.registry)
        await wait_exit(service, self.launch, self.options.exit_timeout)

    # -- one instance's life ------------------------------------------------------

    async def _start(self, label: str, *, check_path: bool = False) -> Service:
        service = await start(self.launch, label, free_port())
        self.started.append(service)
        self.phase = f"{label}: starting on port {service.port}"
        answer = await wait_ready(service, self.launch, self.options.ready_timeout)
        if check_path:
            await self._check_path(service, answer)
        name = self.launch.name
        if not self.launch.registers_itself and self.registry is not None and name is not None:
            await register(self.registry, service, name)
        self.phase = f"{label}: serving"
        return service

    async def _check_path(self, service: Service, answer: httpx.Response) -> None:
        """A path the service answers 4xx to is a bad option, not a finding."""
        if self.launch.target is not None:
            url = service.endpoint + self.options.path
            timeout = self.options.request_timeout
            try:
                async with httpx.AsyncClient(timeout=timeout, trust_env=False) as http:
                    answer = await http.get(url)
            except httpx.HTTPError as exc:
                raise DrillError(f"{service.label}: ready, but GET {url} failed: {exc!r}") from None
        if 400 <= answer.status_code < 500:
            raise ConfigError(
                f"--path {self.options.path}: the service answers {answer.status_code} "
                "before any signal; give a path it serves"
            )

    async def _exits_before(self, service: Service, at: float) -> bool:
        """Wait until ``at``; True when the service exited on its own before that."""
        done, _ = await asyncio.wait({service.ended}, timeout=max(0.0, at - time.monotonic()))
        if done:
            service.read_report(self.launch)
        return bool(done)

    async def _exit(self, service: Service) -> None:
        await wait_exit(service, self.launch, self.options.exit_timeout)
        self.phase = f"{service.label}: exited {service.exit_code}"


async def _sleep_until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
