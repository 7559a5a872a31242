"""The drained App of :mod:`apps` run by itself: ``python serve.py PORT REPORT_FILE``.

For the drill's ``--command`` with ``{report}``: an App that writes its stop
report where the drill asks, without ``quiesce run``.
"""

from __future__ import annotations

import sys

from drill import apps
from quiesce import HTTPServer

if __name__ == "__main__":
    app = apps.drained
    app.report_file = sys.argv[2]
    (server,) = app.servers
    assert isinstance(server, HTTPServer)
    server.port = int(sys.argv[1])
    app.run()
