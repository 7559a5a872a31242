"""The supervisor of ``quiesce run TARGET --workers N``: sockets, signals, registry, one budget.

Start: ``describe`` (a child loads the target and says what to bind: a bad
option is exit 2, a target that cannot be loaded exit 1, its one line and
nothing more), ``bind`` (each HTTP socket once), ``workers`` (N started, the
first one ready within ``start_timeout``), ``register`` (one instance, the
shared sockets as its endpoints). Then it serves until a stop signal;
SIGHUP reloads (:mod:`quiesce.workers.reload`), a dead worker is replaced
(:mod:`quiesce.workers.pool`), SIGUSR1 and SIGQUIT reach every worker (their
task dumps).

Stop (SIGTERM or SIGINT), all within the App's ``stop_timeout`` counted from
the signal: ``deregister`` once; ``stop_workers``: every worker is told the
budget left and stops as on SIGTERM (not ready, its drain, its servers...),
each at the same time; ``kill``: a worker still running at the budget +
:data:`KILL_MARGIN` is SIGKILLed and named. A second signal forces every
worker at once and SIGKILLs what is left :data:`FORCE_KILL_AFTER` later.
Exit 0 only when every worker stopped clean, else 3 (1: failed start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from typing import NoReturn

from quiesce.cli.options import by_name
from quiesce.cli.sources import OptionError, Setting
from quiesce.errors import QuiesceError, StartError
from quiesce.phases import Outcome, PhaseRecord
from quiesce.phases import Sequence as Steps
from quiesce.process import configure_logging
from quiesce.registration import Registration
from quiesce.registry import Instance
from quiesce.report import ExitCode
from quiesce.servers.listening import INHERITED_SOCKETS
from quiesce.signals import REPEAT_WINDOW
from quiesce.workers import metrics_dir
from quiesce.workers.child import REAP_TIMEOUT, Spawn, Worker
from quiesce.workers.describe import Description, Listener, ask, bind, inherited
from quiesce.workers.pool import Pool
from quiesce.workers.reload import RELOAD_DRAIN, reload
from quiesce.workers.stopping import (
    FORCE_KILL_AFTER,
    KILL_MARGIN,
    Timings,
    gather,
    stop_workers,
    unless_forced,
)
from quiesce.workers.summary import SupervisorReport
from quiesce.workers.worker import LOG_FORMAT

__all__ = ["Supervisor", "supervise"]

logger = logging.getLogger("quiesce.workers")


def supervise(flags: Mapping[str, object], settings: Mapping[str, Setting], cwd: str) -> NoReturn:
    """Run the supervisor of ``--workers N`` (``quiesce run``'s hand-over); always exits.

    Raises:
        OptionError: ``--reload-batch`` larger than ``--workers``.

    """
    size = int(settings["workers"].value)
    batch = settings.get("reload_batch")
    if batch is not None and batch.value > size:
        raise OptionError(
            f"--reload-batch ({batch.source}): {batch.value}: must not exceed --workers ({size})"
        )
    from quiesce.cli.run import LEVELS

    level = settings["log_level"].value if "log_level" in settings else "info"
    if configure_logging(LEVELS[level]):
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
    start = settings.get("start_timeout")
    supervisor = Supervisor(
        flags=dict(flags),
        cwd=cwd,
        environ=dict(os.environ),
        size=size,
        batch=batch.value if batch is not None else 1,
        describe_timeout=start.value if start is not None else by_name("start_timeout").default,
    )
    code = asyncio.run(supervisor.run())
    for sig in (signal.SIGTERM, signal.SIGINT):  # the report gave the code: keep it
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


class Supervisor:
    """N workers of one App behind one set of sockets, one registration and one stop budget.

    ``flags`` are ``quiesce run``'s own (the workers gather the rest of the
    options from ``environ`` and ``cwd`` as it does). ``batch`` workers are
    replaced at a time on SIGHUP; ``describe_timeout`` bounds the loading of
    the target in the describe child.
    """

    def __init__(
        self,
        *,
        flags: Mapping[str, object],
        cwd: str,
        environ: Mapping[str, str],
        size: int,
        batch: int = 1,
        describe_timeout: float = 30.0,
        kill_margin: float = KILL_MARGIN,
        force_kill_after: float = FORCE_KILL_AFTER,
        reload_drain: float = RELOAD_DRAIN,
    ) -> None:
        self.flags = dict(flags)
        self.cwd = cwd
        self.environ = {k: v for k, v in environ.items() if k != INHERITED_SOCKETS}
        self.size = size
        self.batch = batch
        self.describe_timeout = describe_timeout
        self.timings = Timings(kill_margin, force_kill_after)
        self.reload_drain = reload_drain
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.report = SupervisorReport(app="quiesce-workers", id=self.id)
        self.description: Description | None = None
        self.listeners: list[Listener] = []
        self.pool: Pool | None = None
        self.running = False
        self._folder = ""
        self._registration: Registration | None = None
        #: Whether the one instance is in the registry now (the workers' ``quiesce_registered``).
        self._registered = False
        self._endpoints: tuple[str, ...] = ()
        self._exit_now: int | None = None  # the describe child's code: exit with it at once
        self._fatal: str | None = None
        self._stop_began: float | None = None
        self._seen = 0
        self._first_at = 0.0
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    # -- the run ---------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until a stop signal, stop; returns the exit code (see the module)."""
        loop = asyncio.get_running_loop()
        self._requested = asyncio.Event()
        self._forced = asyncio.Event()
        self._first_ready = asyncio.Event()
        self._folder = tempfile.mkdtemp(prefix="quiesce-workers-")
        handlers = self._install(loop)
        try:
            return await self._lifecycle()
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)
            for listener in self.listeners:
                listener.close()
            shutil.rmtree(self._folder, ignore_errors=True)

    async def _lifecycle(self) -> int:
        report = self.report
        start = Steps("start")
        report.start = start.records
        task = asyncio.create_task(self._start(start), name="quiesce supervisor start")
        if not await _first(task, self._requested):
            task.cancel()
            await asyncio.wait({task}, timeout=REAP_TIMEOUT)
        elif (exc := task.exception()) is not None:
            raise exc
        if self._exit_now is not None:
            return self._exit_now  # the describe child said why, in one line
        failure = start.failure()
        if failure is not None:
            report.error = report.error or failure
            report.reason = report.reason or "start failed"
            logger.error("start failed: %s", failure)
        elif self.running:
            logger.info(
                "supervisor ready: %d workers, pid %d, endpoints=%s",
                self.size,
                os.getpid(),
                ",".join(self._endpoints) or "-",
            )
            await self._requested.wait()
        stop = Steps("stop")
        report.stop = stop.records
        report.stop_began = stop.began
        await self._stop(stop)
        if failure is not None or self._fatal is not None:
            report.exit_code = ExitCode.FAILED
        elif report.incomplete() or any(w.get("exit_code") != 0 for w in report.workers.values()):
            report.exit_code = ExitCode.INCOMPLETE
        await report.show()
        if self.description is not None and self.description.report_file is not None:
            try:
                await asyncio.to_thread(report.write, self.description.report_file)
            except OSError as exc:
                logger.error("cannot write the report to %s: %s", self.description.report_file, exc)
        return report.exit_code

    async def _start(self, seq: Steps) -> None:
        # What to bind, from a child that loads the target (nothing of it is imported here).
        # Not logged when the child failed: its own line is all there is to say.
        rec = PhaseRecord(
            "describe", offset=time.monotonic() - seq.began, budget=self.describe_timeout
        )
        try:
            await self._describe(rec)
        except Exception as exc:
            rec.error("describe", exc, log=not isinstance(exc, QuiesceError))
        except asyncio.CancelledError:  # a stop signal: the child was killed
            rec.mark(Outcome.FORCED)
            rec.cut.append("describe [interrupted]")
            raise
        finally:
            rec.duration = time.monotonic() - seq.began - rec.offset
            seq.records.append(rec)
            if self._exit_now is None:
                seq.log(rec)
        if not rec.ok or self.description is None:
            return
        desc = self.description
        self.report.app = desc.name
        self.report.id = self.id = desc.id or self.id

        # Each HTTP socket once, for every worker; gRPC's ports held for theirs.
        async with seq.step("bind", None) as rec:
            self.listeners = bind(desc.servers)
            rec.waited_for.extend(f"server {x.spec.name!r} on {x.address}" for x in self.listeners)
        if not rec.ok:
            return

        # The workers; the first one ready (every server of its App) ends the step.
        async with seq.step("workers", desc.start_timeout) as rec:
            rec.waited_for.append(f"{self.size} workers, the first one ready")
            self.pool = self._make_pool(desc)
            for _ in range(self.size):
                await self.pool.add()
            try:
                async with asyncio.timeout(desc.start_timeout):
                    await self._first_ready.wait()
            except TimeoutError:
                rec.timed_out(f"no worker ready within start_timeout={desc.start_timeout:g}s")
            if self._fatal is not None:
                raise StartError("workers", self._fatal)
        if not rec.ok:
            return

        # One instance for the whole pool, its endpoints the shared sockets.
        if self._registration is None:
            seq.skip("register", "no registry")
        else:
            async with seq.step("register", desc.registry_timeout) as rec:
                instance = Instance(
                    self.id, desc.name, desc.version, dict(desc.metadata), self._endpoints
                )
                now = await self._registration.register(rec, instance, desc.registry_timeout)
            if not rec.ok:
                return
            self._tell_registered(now)
        self.running = True

    async def _describe(self, rec: PhaseRecord) -> None:
        hello = {"flags": self.flags, "cwd": self.cwd, "describe": True}
        # Not the pool's metrics directory: the child would leave its files there.
        env = {k: v for k, v in self.environ.items() if k != metrics_dir.VARIABLE}
        found = await ask(Spawn(hello, env, self.cwd), self.describe_timeout, rec.waited_for)
        if isinstance(found, int):
            self._exit_now = found
            return
        self.description = found
        if found.registry is not None:
            self._registration = Registration(
                found.registry, timeout=found.registry_timeout, required=found.registry_required
            )
            self._registration.resolve(found.name)

    def _make_pool(self, desc: Description) -> Pool:
        env = {**self.environ, INHERITED_SOCKETS: inherited(self.listeners)}
        metrics = metrics_dir.prepare(desc, self.environ, self._folder)
        if metrics is not None:
            env[metrics_dir.VARIABLE] = metrics
        hello = {
            "flags": self.flags,
            "cwd": self.cwd,
            "ports": {x.spec.name: x.port for x in self.listeners},
            "reports": self._folder,
        }
        fds = [x.sock.fileno() for x in self.listeners if x.shared]
        return Pool(
            Spawn(hello, env, self.cwd, fds),
            size=self.size,
            start_timeout=desc.start_timeout,
            stop_timeout=desc.stop_timeout,
            kill_margin=self.timings.kill_margin,
            reports=self._folder,
            on_ready=self._worker_ready,
            on_exit=lambda worker: metrics_dir.fold(metrics, worker.pid),
            on_fatal=self._workers_failed,
        )

    # -- the stop --------------------------------------------------------------

    async def _stop(self, seq: Steps) -> None:
        self.running = False
        if self._reloading is not None:
            self._reloading.cancel()
            await asyncio.wait({self._reloading}, timeout=REAP_TIMEOUT)
        if self.pool is not None:
            self.pool.close()
        desc = self.description
        total = desc.stop_timeout if desc is not None else 0.0
        began = self._stop_began or time.monotonic()

        def left() -> float:
            return max(0.0, total - (time.monotonic() - began))

        # Deregister once, for every worker, so that clients stop picking the instance.
        registration = self._registration
        if desc is not None and registration is not None and registration.began:
            budget = min(desc.registry_timeout, left())
            async with seq.step("deregister", budget) as rec:
                ended = await unless_forced(registration.deregister(rec), budget, self._forced)
                if ended == "timeout":
                    rec.timed_out(f"registry {registration.label} (timeout {budget:.3g}s)")
            if registration.deregistered:  # else it may well still be there: the App's rule too
                self._tell_registered(False)
        else:
            seq.skip("deregister", "not registered")

        # The supervisor's own descriptors: the workers keep theirs while they drain.
        for listener in self.listeners:
            listener.close()

        # Every worker at once, each told what is left of the one budget; then the kills.
        workers = self.pool.live() if self.pool is not None else []
        if not workers:
            seq.skip("stop_workers", "no workers")
            return
        await stop_workers(seq, workers, left, self._forced, total, self.timings)
        self.report.workers = gather(workers, self._folder)

    # -- events ----------------------------------------------------------------

    def _worker_ready(self, worker: Worker) -> None:
        if not self._first_ready.is_set():
            self._endpoints = tuple(worker.endpoints)
            self._first_ready.set()
        if self._registered:
            worker.tell({"registered": True})

    def _tell_registered(self, now: bool) -> None:
        """Say to every live worker whether the instance is registered: their metrics show it."""
        self._registered = now
        for worker in self.pool.live() if self.pool is not None else []:
            worker.tell({"registered": now})

    def _workers_failed(self, line: str) -> None:
        self._fatal = line
        self.report.error = line
        self._first_ready.set()  # wakes the start, which fails on it
        if self.running:
            logger.error("%s", line)
            self._request_stop("workers failed to start")

    def _install(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        handlers = {
            signal.SIGTERM: self._on_stop_signal,
            signal.SIGINT: self._on_stop_signal,
            signal.SIGHUP: self._on_hangup,
            signal.SIGUSR1: self._forward,
            signal.SIGQUIT: self._forward,
        }
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler, sig)
        return list(handlers)

    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        now = time.monotonic()
        if self._seen == 1 and now - self._first_at < REPEAT_WINDOW:
            return  # one keypress forwarded twice (a wrapper and the process group)
        self._seen += 1
        if self._seen == 1:
            self._first_at = now
            self._request_stop(f"signal {name}")
        elif not self._forced.is_set():
            logger.warning("stop forced reason=%r", f"signal {name}")
            self._forced.set()

    def _request_stop(self, reason: str) -> None:
        if self._requested.is_set():
            return
        self._stop_began = time.monotonic()
        self.report.reason = reason
        logger.info("stop requested reason=%r", reason)
        self._requested.set()

    def _on_hangup(self, sig: int) -> None:
        if not self.running or self.pool is None:
            logger.warning("SIGHUP ignored: the supervisor is not serving (starting or stopping)")
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            logger.info("reload: SIGHUP during a reload; another one follows it")
            return
        self._reloading = asyncio.create_task(self._reloads(self.pool), name="quiesce reload")

    async def _reloads(self, pool: Pool) -> None:
        while True:
            self._reload_again = False
            await reload(pool, batch=self.batch, drain=self.reload_drain)
            if not self._reload_again:
                return

    def _forward(self, sig: int) -> None:
        for worker in self.pool.live() if self.pool is not None else []:
            worker.signal(sig)


async def _first(task: asyncio.Task[None], event: asyncio.Event) -> bool:
    """Wait for ``task`` or ``event``; True if the task ended first (or both did)."""
    waiter = asyncio.create_task(event.wait())
    await asyncio.wait({task, waiter}, return_when="FIRST_COMPLETED")
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    return task.done()
