"""The :class:`App`: start servers concurrently, stop them in bounded, ordered, reported phases.

Start: validate, resources, ``before_start``, servers (by ``depends_on``,
concurrently otherwise), register, ready, ``after_start``. Any failure stops
what already started, in reverse.

Stop: ``not_ready``, ``before_stop``, ``deregister``, ``drain``,
``stop_servers``, ``tasks``, ``after_stop``, ``resources``; each bounded by
its share of one budget (:mod:`quiesce.budget`). A second signal forces the
end at once (:mod:`quiesce.control`). Servers see the run through a
:class:`~quiesce.lifecycle.Lifecycle`, never the App.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

from quiesce import config, logqueue, tracing
from quiesce.budget import StopBudget
from quiesce.control import FORCE_GRACE, StopControl
from quiesce.drain import Drain, hold
from quiesce.errors import ConfigError, ServerExitedError
from quiesce.group import ServerGroup
from quiesce.lifecycle import Lifecycle, LifecycleEvent
from quiesce.options import check_options
from quiesce.phases import Deadline, Outcome, State
from quiesce.phases import Sequence as Steps
from quiesce.process import run_and_exit
from quiesce.registration import Registration
from quiesce.registry import Instance, Registry
from quiesce.report import ExitCode, Report
from quiesce.servers.contract import Attachable, Server, bound_loop
from quiesce.service import Service, listed
from quiesce.signals import task_dump
from quiesce.watchdog import Watchdog, last_report

__all__ = ["App", "AppInfo", "LifecycleEvent"]

logger = logging.getLogger("quiesce.lifecycle")

#: Who this instance is (Kratos' ``AppInfo``): the same class as :class:`quiesce.Instance`,
#: so what :attr:`App.info` says is exactly what the registry stores.
AppInfo = Instance


class App(Service):
    """A service: its servers, resources, hooks and tracked work, run as one lifecycle.

    What it is made of is declared with the methods of :class:`~quiesce.service.Service`
    (``add_server``, ``resource``, the hook decorators, ``spawn``, ``guard``, ``every``).

    Args:
        name: the service name (registry key, logs, report).
        version: the service version, registered with the instance.
        id: the instance id; default ``<host>-<pid>-<random>``.
        metadata: free-form labels registered with the instance.
        servers: :class:`~quiesce.Server` objects; more can be added with :meth:`add_server`.
        registry: None (no registration), a URL, or a :class:`~quiesce.registry.Registry`.
        signals: the stop signals; the first stops, a second one forces the end.
        drain_delay: how long to keep serving after deregistering and going not-ready:
            seconds, or a :class:`~quiesce.Drain` that ends once traffic stops.
        stop_timeout: the whole stop's budget; the hard end.
        start_timeout: the whole start's budget.
        hook_timeout: each hook's own timeout.
        server_stop_timeout: default stop timeout of a server without its own
            ``stop_timeout`` (None: whatever is left of the stop budget).
        cleanup_reserve: seconds of ``stop_timeout`` kept for ``after_stop`` and
            ``resources`` (default: a fifth of ``stop_timeout``, at most 5 s).
        cancel_grace: seconds cancelled tasks get to unwind when the deadline cuts them.
        registry_timeout: bound on each registry call at start and at stop.
        registry_required: when registration fails at start, fail the start (True), or
            serve anyway and keep registering in the background (False).
        grace_period: the platform's kill deadline after its stop signal (Kubernetes'
            ``terminationGracePeriodSeconds``, 30 s by default): a stop that could
            take longer gets a warning with the numbers at the start.
        report_file: also write the report there, as JSON.
        log_queue: write log records from a thread, through a bounded queue, so that a
            stalled log stream cannot block the loop (see :mod:`quiesce.logqueue`).
            None: :meth:`run` does it for the handlers it sets up; True: over the
            root logger's handlers, in :meth:`serve` too; False: never.

    An unknown or misspelt option is a bad configuration like any other:
    :meth:`serve` and :meth:`run` end with exit code 2 and one line.

    """

    @config.lenient
    def __init__(
        self,
        *,
        name: str,
        version: str = "0.0.0",
        id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        servers: Iterable[Server] = (),
        registry: str | Registry | None = None,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        drain_delay: float | Drain = 0.0,
        stop_timeout: float = 30.0,
        start_timeout: float = 30.0,
        hook_timeout: float = 10.0,
        server_stop_timeout: float | None = None,
        cleanup_reserve: float | None = None,
        cancel_grace: float = 0.5,
        registry_timeout: float = 5.0,
        registry_required: bool = True,
        grace_period: float = config.KUBERNETES_GRACE,
        report_file: str | os.PathLike[str] | None = None,
        log_queue: bool | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.id = id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.metadata = dict(metadata or {})
        super().__init__(servers, Lifecycle(name))
        self.registry = registry
        self.signals: Sequence[int] = listed(signals)
        self.drain_delay = drain_delay
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.hook_timeout = hook_timeout
        self.server_stop_timeout = server_stop_timeout
        self._cleanup_reserve = cleanup_reserve
        self.cancel_grace = cancel_grace
        self.registry_timeout = registry_timeout
        self.registry_required = registry_required
        self.grace_period = grace_period
        self.report_file = report_file
        self.log_queue = log_queue

        #: Set once every server is ready (and the instance registered), before ``after_start``.
        self.ready = self.lifecycle.ready
        #: Set when the stop begins; long-lived handlers wait on it to finish cleanly.
        self.stopping = self.lifecycle.stopping
        #: Set when the stop has finished and the report is final.
        self.stopped = LifecycleEvent()
        #: The run's report, filled in as the run goes; final once :attr:`stopped` is set.
        self.report = Report(app=name, id=self.id)

        self._registration = Registration(None, timeout=registry_timeout, required=True)
        self._group = ServerGroup()
        self._control = StopControl(lambda: self.state, self._set_reason)
        self._crashed = False
        self._owns_process = False
        self._steps: Steps | None = None  # the sequence running now, for the watchdog
        self._report_file_checked = False  # a report_file that failed its check is not written
        self._given: frozenset[str] = frozenset()  # the options passed (config.lenient)
        self._call_errors: list[str] = []  # what was wrong with the call (config.lenient)

    @property
    def cleanup_reserve(self) -> float:
        """Seconds of the stop budget kept for ``after_stop`` and ``resources``."""
        if self._cleanup_reserve is None:
            return min(5.0, self.stop_timeout / 5)
        return self._cleanup_reserve

    # -- identity --------------------------------------------------------------

    @property
    def info(self) -> Instance:
        """The instance: id, name, version, metadata and the endpoints of started servers."""
        endpoints = self._group.endpoints()
        return Instance(self.id, self.name, self.version, dict(self.metadata), endpoints)

    # -- running ---------------------------------------------------------------

    def run(self) -> NoReturn:
        """Run the app in a new event loop (uvloop when installed), then exit the process.

        Exit codes: 0 clean stop, 1 failed start or crashed server, 2 bad
        configuration, 3 incomplete stop (see :class:`~quiesce.report.ExitCode`).
        """
        self._owns_process = True

        async def main() -> int:
            return (await self.serve()).exit_code

        # A grpc.aio.Server built at import time is bound to the loop current then: run on it.
        given: object = self.servers  # not a list: the validation makes it exit 2
        loop = bound_loop(self.servers) if isinstance(given, list) else None
        run_and_exit(main, self.cancel_grace, loop, log_queue=self.log_queue)

    async def serve(self) -> Report:
        """Run the whole lifecycle in the running loop and return the report.

        Returns when the app has stopped (signal, :meth:`stop`, failed start
        or crashed server); never calls ``sys.exit``. ``report.exit_code``
        says how it ended.

        Raises:
            RuntimeError: the app has already run.

        """
        self._check_not_started("serve")
        loop = asyncio.get_running_loop()
        self._tracker.bind(loop)
        self.lifecycle.tracked_tasks = self._tracker.running
        self.lifecycle.dump_tasks = lambda: task_dump(loop)
        watchdog = Watchdog(self._last_report, self.report_file) if self._owns_process else None
        self._control.bind(watchdog)
        try:
            # Before anything else, signal handlers included: a bad config starts nothing.
            if not (budget := self._validate()).endswith(": fits"):
                logger.warning("%s", budget)
        except ConfigError as exc:
            self.report.error = str(exc)
            self.report.exit_code = ExitCode.CONFIG
            logger.error("bad configuration: %s", exc)
            self._set_state(State.STOPPED)
            return await self._finish()
        tracing.attach(self.lifecycle)
        scope = self._control.signals(self.signals, until_exit=self._owns_process)
        logs = None
        if self.log_queue and not self._owns_process and logqueue.current() is None:
            logs = logqueue.LogQueue().install()
        try:
            with scope:
                await self._lifecycle()
            return await self._finish(show=True)
        finally:
            if logs is not None:
                await asyncio.to_thread(logs.close)

    async def _finish(self, *, show: bool = False) -> Report:
        self.report.tasks_failed = self._tracker.failed_total
        self.report.accounts = self._group.accounts()
        if (logs := logqueue.current()) is not None:
            self.report.log_records_dropped = logs.dropped
        if show:
            await self.report.show()
        if self.report_file is not None and self._report_file_checked:
            try:
                await asyncio.to_thread(self.report.write, self.report_file)
            except OSError as exc:  # the stop itself went as the report says: keep its code
                logger.error("cannot write the report to %s: %s", self.report_file, exc)
        self.stopped.set()
        return self.report

    def check(self) -> str:
        """Check every option and server as the start would, without starting anything.

        Returns the stop budget, part by part, against ``grace_period`` (one line).

        Raises:
            ConfigError: the first bad option (what the run would exit 2 with).

        """
        return self._validate()

    def stop(self, reason: str = "stop() called") -> None:
        """Begin the stop; safe from any thread and idempotent."""
        self._control.stop(reason)

    # -- the lifecycle ---------------------------------------------------------

    async def _lifecycle(self) -> None:
        report = self.report
        observers = self.lifecycle.observers
        self._set_state(State.STARTING)
        observers.sequence_began("start")
        start = self._steps = Steps("start", observers)
        report.start = start.records
        # A start blocked in a synchronous call cannot see its own timeout, nor a signal.
        overran = f"the start overran start_timeout={self.start_timeout:g}s"
        with self._control.bounded(self.start_timeout, ExitCode.FAILED, overran):
            await self._control.run_start(self._start(start), grace=self.cancel_grace)
        failure = start.failure()  # the first failed step's one line, as it recorded it
        serving = self.state is State.RUNNING
        observers.sequence_ended(
            "start", "failed" if failure else "clean" if serving else "aborted"
        )
        if failure is not None:
            report.error = failure
            report.reason = report.reason or "start failed"
            logger.error("start failed: %s", failure)
        elif self.state is State.RUNNING:
            logger.info(
                "start ready took=%.3fs endpoints=%s",
                _since(start),
                ",".join(self.info.endpoints) or "-",
            )
            await self._control.wait()

        observers.sequence_began("stop")
        stop = self._steps = Steps("stop", observers)
        report.stop = stop.records
        report.stop_began = stop.began
        await self._stop_or_force(stop)
        self._set_state(State.STOPPED)
        if failure is not None or self._crashed:
            report.exit_code = ExitCode.FAILED
        elif report.incomplete():
            report.exit_code = ExitCode.INCOMPLETE
        observers.sequence_ended("stop", report.outcome)
        # Last, with what is left of the stop budget: a trace exporter sends the stop's spans.
        left = stop.began + self.stop_timeout - time.monotonic()
        report.observers_cut = await observers.flush(left)

    async def _start(self, seq: Steps) -> None:
        deadline = Deadline(self.start_timeout)

        # Resources, one at a time in dependency-then-declaration order.
        async with seq.step("resources", deadline.remaining()) as rec:
            await self._resources.enter(rec, deadline.remaining())
        if not rec.ok:
            return

        # before_start hooks; a failing one fails the start.
        if not (await self._hooks.step(seq, "before_start", deadline.remaining())).ok:
            return

        # Servers: each as soon as what it depends on is ready; ready means bound.
        async with seq.step("servers", deadline.remaining()) as rec:
            await self._group.start(rec, deadline.remaining())
        if not rec.ok:
            return

        # Register the instance with the real endpoints.
        async with seq.step("register", deadline.remaining()) as rec:
            if self._registration.registry is not None:
                registration = self._registration.register(rec, self.info, deadline.remaining())
                self.lifecycle.registered = await registration
        if not rec.ok:
            return

        # Ready: readiness turns true, periodic jobs begin, crashes are watched.
        self._set_state(State.RUNNING)
        self.ready.set()
        self._tracker.start_jobs()
        self._group.watch(self._server_exited)

        # after_start hooks; a failing one fails the start (the stop follows).
        await self._hooks.step(seq, "after_start", deadline.remaining())

    async def _stop(self, seq: Steps) -> None:
        budget = StopBudget(
            self.stop_timeout,
            reserve=self.cleanup_reserve,
            server_default=self.server_stop_timeout,
        )
        serving = self.state is State.RUNNING
        self._set_state(State.STOPPING)
        self.stopping.set()
        self._group.unwatch()

        # Not ready: readiness 503 / NOT_SERVING while everything still serves.
        async with seq.step("not_ready", budget.serving()) as rec:
            await self._group.drain(rec)

        # before_stop hooks (go-zero's wrap-up listeners), paired with after_start.
        await self._hooks.step(seq, "before_stop", budget.serving())

        # Deregister, so clients stop picking this instance.
        if self._registration.began:
            async with seq.step("deregister", min(self.registry_timeout, budget.serving())) as rec:
                await self._registration.deregister(rec)
                self.lifecycle.registered = False
        else:
            seq.skip("deregister", "not registered")

        # Drain: keep serving while clients and balancers notice; the note says how it ended.
        if serving and self.drain_delay != 0:
            async with seq.step("drain", budget.serving()) as rec:
                rec.note = await hold(self.drain_delay, self.lifecycle)
        else:
            seq.skip("drain", "no drain delay" if serving else "never served")

        # Servers, dependents before what they depend on; independent ones concurrently.
        async with seq.step("stop_servers", budget.serving()) as rec:
            await self._group.stop(rec, budget)

        # Tracked tasks and periodic jobs, then spawn/guard are closed.
        # The tracker bounds itself (wait, then cancel with a grace) so that it can name
        # what it cut; the step's own timeout is only a backstop behind it.
        wait, grace = budget.tasks(self.cancel_grace)
        async with seq.step("tasks", wait + grace + self.cancel_grace) as rec:
            await self._tracker.stop(rec, budget=wait, cancel_grace=grace)

        # after_stop hooks, paired with before_start; half the reserve stays for resources.
        await self._hooks.step(seq, "after_stop", budget.after_stop())

        # Resources, last in first out; the step's backstop still ends by the deadline.
        async with seq.step("resources", budget.resources()) as rec:
            await self._resources.close(rec, budget.resources())

    # -- stop helpers ----------------------------------------------------------

    async def _stop_or_force(self, seq: Steps) -> None:
        overran = f"the stop overran stop_timeout={self.stop_timeout:g}s"
        with self._control.bounded(self.stop_timeout, ExitCode.INCOMPLETE, overran):
            await self._control.run_stop(self._stop(seq), lambda: self._force_end(seq))

    async def _force_end(self, seq: Steps) -> None:
        async with seq.step("forced", FORCE_GRACE) as rec:
            rec.mark(Outcome.FORCED)
            rec.cut.extend(self._tracker.abandon())
            self._tracker.record_failures(rec)  # the tasks phase may never have run
            await self._group.stop_at_once(rec)
            await self._resources.close(rec, FORCE_GRACE / 3, at_once=True)

    def _last_report(self, cause: str, code: int) -> Report:
        """The report as the watchdog leaves it (runs in the watchdog's thread)."""
        left_behind = self._registration.left_behind()
        return last_report(
            self.report, self._steps, cause=cause, code=code, left_behind=left_behind
        )

    # -- control ---------------------------------------------------------------

    def _set_reason(self, reason: str) -> None:
        self.report.reason = reason

    def _server_exited(self, name: str, cause: str) -> None:
        if self.state is State.RUNNING:
            error = ServerExitedError(f"server {name!r} exited: {cause}")
            self._crashed = True
            self.report.error = str(error)
            logger.error("%s", error)
            self._control.request_stop(str(error))

    # -- configuration ---------------------------------------------------------

    def _validate(self) -> str:
        config.check_call(self._call_errors)
        # First: once it is known to be writable, every other bad option still gets a report.
        config.check_report_file(self.report_file)
        self._report_file_checked = True
        self._hooks.check()  # each hook's own timeout, before the budget adds them up
        hooks = [*self._hooks.groups["before_stop"], *self._hooks.groups["after_stop"]]
        budget_line = check_options(self, stop_hooks=[hook.timeout for hook in hooks])
        for job in self._jobs:
            config.check_period(job.seconds, job.fn)
        config.check_names(self.servers, self._resources.resources)
        self._resources.check()  # each close_timeout
        self._registration = Registration(
            self.registry, timeout=self.registry_timeout, required=self.registry_required
        )
        self._registration.resolve(self.name)
        self.lifecycle.registry = self._registration.registry
        self.lifecycle.find_server = {s.name: s for s in self.servers}.get
        self._group = ServerGroup(self.servers, self.lifecycle.observers)
        self.lifecycle.in_flight = self._group.in_flight
        self.lifecycle.readiness = self._group.readiness
        self.lifecycle.accounts = self._group.accounts
        self._hooks.timeout = self.hook_timeout
        for server in self.servers:
            if isinstance(server, Attachable):
                server.attach(self.lifecycle)
        return budget_line

    def _set_state(self, state: State) -> None:
        order = list(State)
        if order.index(state) < order.index(self.state):
            raise RuntimeError(f"lifecycle cannot go from {self.state.value} to {state.value}")
        self.lifecycle.state = state
        self.lifecycle.observers.state_changed(state)


# -- module helpers -------------------------------------------------------------


def _since(seq: Steps) -> float:
    return sum(r.duration for r in seq.records)
