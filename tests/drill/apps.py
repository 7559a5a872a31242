"""Two Apps around :mod:`plain` for ``quiesce run`` in the drill tests.

- ``nodrain``: ``drain_delay=0``: deregisters and closes its listener at once,
  before any client could have noticed;
- ``drained``: ``drain_delay`` 1 s, longer than the drill tests' notice delay.

``quiesce run`` sets the HTTP server's host and port (``--host``/``--port``).
The tests' environment has ``tests/`` on ``PYTHONPATH``, so ``drill.plain`` is found.
"""

from __future__ import annotations

from drill import plain
from quiesce import App, HTTPServer

#: The drained App's delay: above the notice delay its test gives the drill (0.5 s).
DRAIN_DELAY = 1.0


def _app(name: str, drain_delay: float) -> App:
    app = App(name=name, drain_delay=drain_delay, stop_timeout=10.0)
    app.add_server(HTTPServer(plain.app, host="127.0.0.1", port=0, access_log=False))
    return app


nodrain = _app("nodrain", 0.0)
drained = _app("drained", DRAIN_DELAY)
