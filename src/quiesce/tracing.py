"""Traces of the start and the stop (extra ``quiesce[otel]``); see :func:`attach`.

The start and the stop are a span each (``quiesce.start``, ``quiesce.stop``),
with one child span per step (``quiesce.phase <name>``) and, under the
``stop_servers`` step, one per server stop (``quiesce.server_stop <name>``).
The spans go to the tracer provider the user set up (OpenTelemetry's global
one unless another is given); at the very end of the run the App flushes it
with what is left of the stop budget, so that the stop's own spans are sent
before the process exits.

``import quiesce`` does not import OpenTelemetry: :func:`attach` imports it,
and only when it is installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from quiesce.lifecycle import Lifecycle
from quiesce.observe import Observer
from quiesce.phases import Outcome, PhaseRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["FLUSH_MARGIN", "Tracing", "attach"]

#: How much longer than its budget the tracer provider's flush may run. The App stops
#: waiting for it at the budget and names it cut in the report; given exactly the budget,
#: the provider would race that and could give up first, and the loss go unnamed.
FLUSH_MARGIN = 0.05

#: Step outcomes that make a span's status an error.
_FAILED = (Outcome.ERROR, Outcome.TIMEOUT, Outcome.FORCED)


def attach(lifecycle: Lifecycle, tracer_provider: TracerProvider | None = None) -> None:
    """Add a :class:`Tracing` observer to ``lifecycle`` when OpenTelemetry is installed.

    Without the ``opentelemetry`` API this does nothing (and never fails). Once
    a lifecycle has one, later calls add none: a test, or a user, may attach
    with a ``tracer_provider`` of their own before :meth:`quiesce.App.serve`
    attaches with the global one.
    """
    if not _installed():
        return
    if not any(isinstance(o, Tracing) for o in lifecycle.observers.observers):
        lifecycle.observers.add(Tracing(lifecycle.app, tracer_provider))


def _installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ImportError:  # no "opentelemetry" package at all, or one blocked in sys.modules
        return False


@runtime_checkable
class _Flushes(Protocol):
    """A tracer provider that buffers (the SDK's); the API's no-op and proxy ones do not."""

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...


class Tracing(Observer):
    """The spans of one app's start and stop, made as the App tells its observers.

    Each step's span has the attributes ``quiesce.outcome``,
    ``quiesce.waited_for``, ``quiesce.cut``, ``quiesce.errors`` and
    ``quiesce.note``; each server stop's ``quiesce.in_flight.begin``,
    ``quiesce.in_flight.end`` (when the server can tell) and ``quiesce.cut``.
    A step that timed out, failed or was forced, and a server stop that cut
    something, have an error status.

    Raises:
        ImportError: the ``opentelemetry`` API is not installed.

    """

    def __init__(self, app: str, tracer_provider: TracerProvider | None = None) -> None:
        from opentelemetry import trace

        self.app = app
        self._provider = tracer_provider
        self._tracer = trace.get_tracer("quiesce", tracer_provider=tracer_provider)
        self._sequence: Span | None = None
        self._steps: dict[str, Span] = {}
        self._server_stops: dict[str, Span] = {}

    def sequence_began(self, kind: str) -> None:
        """Open the ``quiesce.start`` or ``quiesce.stop`` span (a child of the current span)."""
        self._sequence = self._tracer.start_span(
            f"quiesce.{kind}", attributes={"quiesce.app": self.app}
        )

    def step_began(self, kind: str, step: str) -> None:
        """Open the step's span under the sequence's."""
        self._steps[step] = self._child(self._sequence, f"quiesce.phase {step}")

    def step_ended(self, kind: str, record: PhaseRecord) -> None:
        """Close the step's span with what its record says (a skipped step's is opened here)."""
        span = self._steps.pop(record.name, None)
        if span is None:
            span = self._child(self._sequence, f"quiesce.phase {record.name}")
        span.set_attributes(
            {
                "quiesce.outcome": record.outcome.value,
                "quiesce.waited_for": list(record.waited_for),
                "quiesce.cut": list(record.cut),
                "quiesce.errors": list(record.errors),
                "quiesce.note": record.note,
            }
        )
        if record.outcome in _FAILED:
            _failed(span, record.failure() or record.outcome.value)
        span.end()

    def server_stop_began(self, server: str, in_flight: int | None) -> None:
        """Open the server stop's span under the ``stop_servers`` step's."""
        parent = self._steps.get("stop_servers", self._sequence)
        span = self._child(parent, f"quiesce.server_stop {server}")
        if in_flight is not None:
            span.set_attribute("quiesce.in_flight.begin", in_flight)
        self._server_stops[server] = span

    def server_stop_ended(self, server: str, in_flight: int | None, cut: Sequence[str]) -> None:
        """Close the server stop's span with what was left in flight and what was cut."""
        span = self._server_stops.pop(server, None)
        if span is None:
            return
        if in_flight is not None:
            span.set_attribute("quiesce.in_flight.end", in_flight)
        span.set_attribute("quiesce.cut", list(cut))
        if cut:
            _failed(span, f"server {server} cut {len(cut)}")
        span.end()

    def sequence_ended(self, kind: str, outcome: str) -> None:
        """Close the sequence's span, and any span of it left open."""
        for left_open in [*self._server_stops.values(), *self._steps.values()]:
            left_open.end()
        self._server_stops.clear()
        self._steps.clear()
        if (span := self._sequence) is not None:
            span.set_attribute("quiesce.outcome", outcome)
            if outcome not in ("clean", "aborted"):
                _failed(span, outcome)
            span.end()
            self._sequence = None

    async def flush(self, timeout: float) -> None:
        """Export the spans the provider buffers, within ``timeout`` seconds (in a thread).

        The thread runs at most :data:`FLUSH_MARGIN` past ``timeout``.

        Raises:
            RuntimeError: the provider said its flush did not finish.

        """
        from opentelemetry import trace

        provider = self._provider or trace.get_tracer_provider()
        if not isinstance(provider, _Flushes):
            return
        millis = max(1, int((timeout + FLUSH_MARGIN) * 1000))
        # In a thread: the SDK's flush blocks on its exporters (a network round trip).
        if not await asyncio.to_thread(provider.force_flush, millis):
            raise RuntimeError("the tracer provider's force_flush() did not finish")

    def _child(self, parent: Span | None, name: str) -> Span:
        from opentelemetry import trace

        context = trace.set_span_in_context(parent) if parent is not None else None
        return self._tracer.start_span(name, context=context)


def _failed(span: Span, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))
