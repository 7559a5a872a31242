"""Traces of the start and the stop (extra ``quiesce[otel]``); see :func:`attach`."""

from __future__ import annotations

from quiesce.lifecycle import Lifecycle

__all__ = ["attach"]


def attach(lifecycle: Lifecycle) -> None:
    """Add the tracing observer to ``lifecycle`` when OpenTelemetry is there to receive it."""
