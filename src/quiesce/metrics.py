"""The Prometheus metrics of one app (extra ``quiesce[admin]``): see :class:`Metrics`.

Two sources, one registry of the app's own (never prometheus_client's global
one, so that two apps in one process never collide):

- what the run *did*, counted as it happens by :class:`Metrics`, an
  :class:`~quiesce.observe.Observer`: each step's duration, each stop's outcome;
- what the app *is* now, read from its :class:`~quiesce.Lifecycle` at scrape
  time: its state, the work in flight by server, the tracked tasks, whether it
  is registered. Read, not kept: a scrape can never show a stale state.

``import quiesce`` does not import this module (nor prometheus_client).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quiesce.lifecycle import Lifecycle
from quiesce.observe import Observer
from quiesce.phases import PhaseRecord, State

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The content type of :meth:`Metrics.render` (Prometheus' text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The stop outcomes counted from 0, so that a rate over them exists before the first stop.
_STOP_OUTCOMES = ("clean", "incomplete", "failed")


class Metrics(Observer):
    """The metrics of the app whose ``lifecycle`` this reads, in :attr:`registry`.

    ``quiesce_lifecycle_state{state}`` (1 for the current :class:`~quiesce.State`,
    0 for the others), ``quiesce_in_flight{server}``, ``quiesce_tracked_tasks``,
    ``quiesce_registered`` (0/1), ``quiesce_phase_duration_seconds{sequence,phase}``
    (each step's duration as it ended) and ``quiesce_stops_total{outcome}``.
    Add it to the app's observers (``lifecycle.observers.add(Metrics(lifecycle))``;
    :class:`~quiesce.servers.admin.AdminServer` does) and serve :meth:`render`.
    """

    def __init__(self, lifecycle: Lifecycle) -> None:
        #: A registry of this app's own; register your own metrics here to serve them too.
        self.registry = CollectorRegistry()
        self._phase_duration = Gauge(
            "quiesce_phase_duration_seconds",
            "How long each step of the start and the stop took, as it ended.",
            ["sequence", "phase"],
            registry=self.registry,
        )
        self._stops = Counter(
            "quiesce_stops",
            "Stops by outcome: clean, incomplete (something was cut) or failed.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in _STOP_OUTCOMES:
            self._stops.labels(outcome)
        self.registry.register(_LifecycleCollector(lifecycle))

    def step_ended(self, kind: str, record: PhaseRecord) -> None:
        """Set the step's duration."""
        self._phase_duration.labels(kind, record.name).set(record.duration)

    def sequence_ended(self, kind: str, outcome: str) -> None:
        """Count a stop by its outcome."""
        if kind == "stop":
            self._stops.labels(outcome).inc()

    def render(self) -> bytes:
        """Every metric of :attr:`registry`, in Prometheus' text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _LifecycleCollector(Collector):
    """What the app is now, read from its lifecycle at each scrape."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def collect(self) -> Iterator[Metric]:
        lifecycle = self.lifecycle
        # One gauge per state, as Envoy's server.state: a query can select "stopping" alone.
        state = GaugeMetricFamily(
            "quiesce_lifecycle_state",
            "1 for the app's current lifecycle state, 0 for the others.",
            labels=["state"],
        )
        for each in State:
            state.add_metric([each.value], 1.0 if each is lifecycle.state else 0.0)
        yield state
        in_flight = GaugeMetricFamily(
            "quiesce_in_flight",
            "Requests, calls or messages in flight now, by started server (those that can tell).",
            labels=["server"],
        )
        for server, count in lifecycle.in_flight().items():
            in_flight.add_metric([server], count)
        yield in_flight
        ready = GaugeMetricFamily(
            "quiesce_server_ready",
            "1 while a server that can tell (a consumer) is ready, else 0.",
            labels=["server"],
        )
        for server, is_ready in lifecycle.readiness().items():
            ready.add_metric([server], 1.0 if is_ready else 0.0)
        yield ready
        messages = CounterMetricFamily(
            "quiesce_messages",
            "Messages a consumer took, by what became of them (acked, retried, requeued...).",
            labels=["server", "outcome"],
        )
        for server, account in lifecycle.accounts().items():
            for outcome, value in account.items():
                count = len(value) if isinstance(value, list) else value
                messages.add_metric([server, outcome], count)
        yield messages
        yield GaugeMetricFamily(
            "quiesce_tracked_tasks",
            "Tracked tasks (spawn) and guards running now.",
            value=lifecycle.tracked_tasks(),
        )
        yield GaugeMetricFamily(
            "quiesce_registered",
            "1 while the instance is in the registry, else 0.",
            value=1.0 if lifecycle.registered else 0.0,
        )
