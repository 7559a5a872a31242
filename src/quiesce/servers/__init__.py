"""The :class:`Server` protocol every server adapter implements.

Kratos' ``transport.Server`` has ``Start`` and ``Stop``; ours adds what a
bounded, observable stop needs: readiness (``drain``), the real endpoints, and
the dependency names that order start and stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Server"]


@runtime_checkable
class Server(Protocol):
    """A server the :class:`~quiesce.App` starts, drains and stops.

    ``name`` and ``depends_on`` are plain attributes, so a server may
    subclass this protocol and set them in its ``__init__``; ``depends_on``
    defaults to none.

    Optional members, used when present:

    - ``stop_timeout: float | None``: this server's own stop timeout; None
      inherits the app's remaining stop budget.
    - ``check()``: called before anything starts; raises
      :class:`~quiesce.ConfigError` for a bad option (the run exits with code 2).
    - ``bind(app)``: called once before the start, with the owning app (for
      readiness and ``app.stopping``).
    - ``async wait_closed()``: returns (or raises) when the server stops
      serving on its own; the app then stops with exit code 1.
    - ``in_flight: int``: requests being handled now; the report shows it
      for each server the stop waited for.
    """

    #: Unique within the app; used by ``depends_on``, logs and the report.
    name: str
    #: Names of servers (or resources) that must be ready before this one starts.
    depends_on: Sequence[str] = ()

    async def start(self) -> None:
        """Bind and begin accepting; return only once it accepts. Raise on failure."""
        ...

    async def drain(self) -> None:
        """Begin draining: report not ready, keep serving what arrives."""
        ...

    async def stop(self, timeout: float) -> Sequence[str] | None:
        """Stop accepting, finish in-flight work within ``timeout``, then force.

        Returns descriptions of what had to be forced (open connections,
        cancelled calls), or None/empty when everything finished.
        """
        ...

    def endpoints(self) -> Sequence[str]:
        """The URLs it serves on (``http://127.0.0.1:8000``), real ports once started."""
        ...
