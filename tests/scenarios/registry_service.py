"""A service that registers itself, for the registry scenario tests (a real subprocess).

``python -m tests.scenarios.registry_service CASE REPORT_FILE REGISTRY_URL``.
Prints the same ``EVENT <what> <monotonic time>`` lines as
:mod:`tests.scenarios.lifecycle`; the registry URL comes from the test (a
private etcd or file directory).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from quiesce import App

from .lifecycle import ProbeServer, run_case

#: The drain delay of the ``drain`` case; the test checks the watcher-to-close gap against it.
DRAIN_DELAY = 1.0


def two_servers(app: App) -> None:
    # Staggered starts: a registration before both listen would show up in between.
    app.servers = [ProbeServer("a", start_delay=0.3), ProbeServer("b", start_delay=0.6)]


def drain(app: App) -> None:
    app.drain_delay = DRAIN_DELAY


def plain(app: App) -> None:
    pass


def short_registry_timeout(app: App) -> None:
    app.registry_timeout = 1.0


CASES: dict[str, Callable[[App], None]] = {
    f.__name__: f for f in (two_servers, drain, plain, short_registry_timeout)
}


def main() -> None:
    case, report_file, url = sys.argv[1], sys.argv[2], sys.argv[3]
    app = App(
        name="orders",
        version="1.4.2",
        metadata={"zone": "eu-1"},
        servers=[ProbeServer("main")],
        registry=url,
        stop_timeout=10.0,
        report_file=report_file,
    )
    run_case(app, CASES[case])


if __name__ == "__main__":
    main()
