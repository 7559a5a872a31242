"""A gateway alone in its App, in a process that never imports the bookstore's generated code.

``python -m tests.gateway.edge_service edge REPORT_FILE UPSTREAM [REGISTRY_URL]``: a
``GatewayServer(UPSTREAM)`` on a free port (with the App's registry at
REGISTRY_URL, for ``registry:SERVICE``). So the methods and routes can only come
from the upstream's reflection service. Prints ``EVENT ready <url> <id> <time>``, and
``PB2 <imported>`` at the stop: whether the bookstore's ``_pb2`` got imported.
"""

from __future__ import annotations

import sys

from quiesce import App
from quiesce.gateway.server import GatewayServer
from scenarios.events import event, say


def main() -> None:
    report_file, upstream = sys.argv[2], sys.argv[3]
    registry = sys.argv[4] if len(sys.argv) > 4 else None
    gateway = GatewayServer(upstream, port=0, access_log=False)
    app = App(
        name="edge", servers=[gateway], registry=registry, stop_timeout=10, report_file=report_file
    )

    @app.after_start
    def ready() -> None:
        event(f"ready {gateway.endpoints()[0]} {app.id}")

    @app.after_stop
    def imported() -> None:
        say(f"PB2 {any('bookstore_pb2' in name for name in sys.modules)}")

    app.run()


if __name__ == "__main__":
    main()
