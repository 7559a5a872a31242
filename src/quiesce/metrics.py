"""The Prometheus metrics of one app (extra ``quiesce[admin]``): see :class:`Metrics`.

Two sources, one registry of the app's own (never prometheus_client's global
one, so that two apps in one process never collide):

- what the run *did*, counted as it happens by :class:`Metrics`, an
  :class:`~quiesce.observe.Observer`: each step's duration, each stop's outcome;
- what the app *is* now, read from its :class:`~quiesce.Lifecycle` at scrape
  time: its state, the work in flight by server, the tracked tasks, whether it
  is registered. Read, not kept: a scrape can never show a stale state.

Under a supervisor (``PROMETHEUS_MULTIPROC_DIR`` set for its workers) a scrape
of any worker covers the whole pool instead: each worker writes its metrics to
the directory (prometheus-client's multiprocess mode) and a scrape reads them
all (:mod:`quiesce.metrics_multiprocess`); see docs/metrics_workers.md.

``import quiesce`` does not import this module (nor prometheus_client).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quiesce.errors import ConfigError
from quiesce.lifecycle import Lifecycle
from quiesce.metrics_multiprocess import ENV, DirectoryCollector
from quiesce.observe import Observer
from quiesce.phases import PhaseRecord, State

__all__ = ["CONTENT_TYPE", "Metrics"]

logger = logging.getLogger("quiesce.metrics")

#: The content type of :meth:`Metrics.render` (Prometheus' text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The stop outcomes counted from 0, so that a rate over them exists before the first stop.
_STOP_OUTCOMES = ("clean", "incomplete", "failed")


class _Live(NamedTuple):
    """A metric read from the lifecycle, and how a pool of workers shows it."""

    help: str
    labels: tuple[str, ...]
    #: Its multiprocess mode under a supervisor; "counter": a counter, summed, dead workers too.
    pool: Literal["livesum", "livemin", "livemax", "counter"]


_LIVE: dict[str, _Live] = {
    # One gauge per state, as Envoy's server.state: a query can select "stopping" alone.
    "quiesce_lifecycle_state": _Live(
        "1 for the app's current lifecycle state, 0 for the others "
        "(under a supervisor: how many live workers are in each).",
        ("state",),
        "livesum",
    ),
    "quiesce_in_flight": _Live(
        "Requests, calls or messages in flight now, by started server (those that can tell; "
        "under a supervisor: summed over the live workers).",
        ("server",),
        "livesum",
    ),
    "quiesce_server_ready": _Live(
        "1 while a server that can tell (a consumer) is ready, else 0 "
        "(under a supervisor: 1 only while it is ready in every live worker).",
        ("server",),
        "livemin",
    ),
    "quiesce_messages": _Live(
        "Messages a consumer took, by what became of them (acked, retried, requeued...; "
        "under a supervisor: summed over every worker, the exited ones too).",
        ("server", "outcome"),
        "counter",
    ),
    "quiesce_tracked_tasks": _Live(
        "Tracked tasks (spawn) and guards running now (under a supervisor: summed over the "
        "live workers).",
        (),
        "livesum",
    ),
    "quiesce_registered": _Live(
        "1 while the instance is in the registry, else 0 "
        "(under a supervisor: 1 while any live worker says so).",
        (),
        "livemax",
    ),
}

#: Each live metric's samples now: label values -> value.
Readings = dict[str, dict[tuple[str, ...], float]]


def _read(lifecycle: Lifecycle) -> Readings:
    messages: dict[tuple[str, ...], float] = {
        (server, outcome): float(len(value) if isinstance(value, list) else value)
        for server, account in lifecycle.accounts().items()
        for outcome, value in account.items()
    }
    return {
        "quiesce_lifecycle_state": {
            (each.value,): 1.0 if each is lifecycle.state else 0.0 for each in State
        },
        "quiesce_in_flight": {(s,): float(n) for s, n in lifecycle.in_flight().items()},
        "quiesce_server_ready": {(s,): float(r) for s, r in lifecycle.readiness().items()},
        "quiesce_messages": messages,
        "quiesce_tracked_tasks": {(): float(lifecycle.tracked_tasks())},
        "quiesce_registered": {(): 1.0 if lifecycle.registered else 0.0},
    }


class Metrics(Observer):
    """The metrics of the app whose ``lifecycle`` this reads, in :attr:`registry`.

    ``quiesce_lifecycle_state{state}`` (1 for the current :class:`~quiesce.State`,
    0 for the others), ``quiesce_in_flight{server}``, ``quiesce_tracked_tasks``,
    ``quiesce_registered`` (0/1), ``quiesce_server_ready{server}``,
    ``quiesce_messages_total{server,outcome}``,
    ``quiesce_phase_duration_seconds{sequence,phase}`` (each step's duration as
    it ended) and ``quiesce_stops_total{outcome}``. Add it to the app's
    observers (``lifecycle.observers.add(Metrics(lifecycle))``;
    :class:`~quiesce.servers.admin.AdminServer` does) and serve :meth:`render`.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (a worker of a supervisor),
    :meth:`render` is every worker's metrics in that directory instead: counters
    summed over every worker, the exited ones too; the lifecycle's gauges
    written there at each event, at each scrape and every ``refresh`` seconds
    while the app runs, and merged over the live workers (summed, or for
    readiness the lowest, for the registration the highest); the phase durations
    those of the worker whose step ended last. Every metric created in the
    worker is served, whatever its registry.

    Raises:
        ConfigError: ``PROMETHEUS_MULTIPROC_DIR`` is set but prometheus_client was
            imported before it was (its metrics would not be written there).

    """

    def __init__(self, lifecycle: Lifecycle, *, refresh: float = 1.0) -> None:
        #: A registry of this app's own; register your own metrics here to serve them too.
        self.registry = CollectorRegistry()
        #: The workers' shared directory, or None in a process of its own.
        self.directory = _multiprocess_dir()
        self._phase_duration = Gauge(
            "quiesce_phase_duration_seconds",
            "How long each step of the start and the stop took, as it ended "
            "(under a supervisor: in the worker whose step ended last).",
            ["sequence", "phase"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self._stops = Counter(
            "quiesce_stops",
            "Stops by outcome: clean, incomplete (something was cut) or failed.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in _STOP_OUTCOMES:
            self._stops.labels(outcome)
        self._refresh = refresh
        self._timer: asyncio.TimerHandle | None = None
        self._published: _Published | None = None
        if self.directory is None:
            self.registry.register(_LifecycleCollector(lifecycle))
            self._served = self.registry
        else:
            self._published = _Published(lifecycle, self.registry)
            # Every worker's files, this one's included: this registry's metrics are there too.
            self._served = CollectorRegistry(auto_describe=False)
            self._served.register(DirectoryCollector(self.directory))
            self._published.write()

    def sequence_began(self, kind: str) -> None:
        """Under a supervisor: keep the lifecycle's gauges fresh while the app runs."""
        if kind == "start":
            self._arm()

    def state_changed(self, state: State) -> None:
        """Under a supervisor: write the lifecycle's gauges."""
        self._write()

    def step_ended(self, kind: str, record: PhaseRecord) -> None:
        """Set the step's duration."""
        self._phase_duration.labels(kind, record.name).set(record.duration)
        self._write()

    def sequence_ended(self, kind: str, outcome: str) -> None:
        """Count a stop by its outcome."""
        if kind == "stop":
            self._stops.labels(outcome).inc()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._write()

    def render(self) -> bytes:
        """Every metric of :attr:`registry`, in Prometheus' text format (:data:`CONTENT_TYPE`).

        Under a supervisor, every worker's metrics in :attr:`directory`.

        Raises:
            RuntimeError: under a supervisor, folds of exited workers kept changing
                the directory during every read.
            OSError: under a supervisor, the directory cannot be read.

        """
        self._write()  # this worker's own gauges, exact; the others' as of their last write
        return generate_latest(self._served)

    def _write(self) -> None:
        if self._published is not None:
            self._published.write()

    def _arm(self) -> None:
        if self._published is None or self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven by hand, outside a loop: written at each event only
            return
        self._timer = loop.call_later(self._refresh, self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            self._write()
        except Exception:  # a full disk must not stop the refresh, nor the app
            logger.exception("writing the lifecycle's metrics to %s failed", self.directory)
        self._arm()


def _multiprocess_dir() -> Path | None:
    path = os.environ.get(ENV)
    if not path:
        return None
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigError(
            f"{ENV}={path} was set after prometheus_client was imported: "
            "its metrics would not be written there (set it before the process starts)"
        )
    return Path(path)


class _LifecycleCollector(Collector):
    """What the app is now, read from its lifecycle at each scrape."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def collect(self) -> Iterator[Metric]:
        readings = _read(self.lifecycle)
        for name, spec in _LIVE.items():
            family = CounterMetricFamily if spec.pool == "counter" else GaugeMetricFamily
            metric = family(name, spec.help, labels=spec.labels)
            for labels, value in readings[name].items():
                metric.add_metric(labels, value)
            yield metric


class _Published:
    """What the app is now, written to the workers' directory for the other workers' scrapes."""

    def __init__(self, lifecycle: Lifecycle, registry: CollectorRegistry) -> None:
        self.lifecycle = lifecycle
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        for name, spec in _LIVE.items():
            if spec.pool == "counter":
                self._counters[name] = Counter(name, spec.help, spec.labels, registry=registry)
            else:
                self._gauges[name] = Gauge(
                    name, spec.help, spec.labels, registry=registry, multiprocess_mode=spec.pool
                )
        #: Every value written, by metric and labels: a server gone from a reading reads 0.
        self._written: Readings = {name: {} for name in _LIVE}

    def write(self) -> None:
        readings = _read(self.lifecycle)
        for name, gauge in self._gauges.items():
            written = self._written[name]
            for labels in written:
                written[labels] = 0.0
            written.update(readings[name])
            for labels, value in written.items():
                (gauge.labels(*labels) if labels else gauge).set(value)
        for name, counter in self._counters.items():
            # A consumer's account only grows: the counter takes what it grew by.
            counted = self._written[name]
            for labels, value in readings[name].items():
                if (grown := value - counted.get(labels, 0.0)) > 0:
                    counter.labels(*labels).inc(grown)
                    counted[labels] = value
