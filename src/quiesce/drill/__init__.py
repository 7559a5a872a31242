"""``quiesce drill``: prove that a service stops without losing a request.

The drill starts the service as a subprocess, loads it from loopback
keep-alive clients, sends it a real SIGTERM and keeps the load on; the
verdict says what the clients saw before, during and after the stop, and
whether the stop itself was clean. With several instances it does a rolling
restart behind the discovery client. The parts, one module each:

- :mod:`~quiesce.drill.command`: the click command and its options;
- :mod:`~quiesce.drill.options`: what a drill runs (:class:`DrillOptions`);
- :mod:`~quiesce.drill.scenario`: the course of a drill (:func:`run_drill`);
- :mod:`~quiesce.drill.service`: launching an instance, readiness, signal, exit;
- :mod:`~quiesce.drill.load`: the clients and how a request's outcome is classified;
- :mod:`~quiesce.drill.notice`: clients that notice registry changes late;
- :mod:`~quiesce.drill.verdict`: counting, the rules, the text and JSON verdict;
- :mod:`~quiesce.drill.progress`: the live progress line;
- :mod:`~quiesce.drill.html`: the self-contained HTML page with the chart.

Importing this package imports nothing heavy; :func:`run_drill` needs httpx
(``pip install 'quiesce[drill]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quiesce.drill.options import DrillOptions

if TYPE_CHECKING:
    from quiesce.drill.scenario import run_drill

__all__ = ["DrillOptions", "run_drill"]


def __getattr__(name: str) -> Any:
    if name == "run_drill":
        from quiesce.drill import scenario

        return getattr(scenario, name)
    raise AttributeError(f"module 'quiesce.drill' has no attribute {name!r}")
