"""Services for the tracked-work scenario tests, run as real subprocesses.

``python -m tests.scenarios.tasks_service CASE REPORT_FILE``. Each case prints
``EVENT <what> <monotonic time>`` lines that the tests read; the app logs on
stderr. One real TCP server on a loopback port keeps the app serving.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from quiesce import App
from quiesce.servers.stream import StreamServer
from scenarios.events import event


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()


def failing_task(app: App) -> None:
    """A background task that raises 0.1 s after it was spawned, long before any stop."""

    async def send_receipt() -> None:
        await asyncio.sleep(0.1)
        raise ValueError("receipt service said no")

    @app.after_start
    async def handler() -> None:
        _ = app.spawn(send_receipt(), name="send_receipt")  # the spawn site the report names
        event("spawned")


CASES: dict[str, Callable[[App], None]] = {f.__name__: f for f in (failing_task,)}


def main() -> None:
    case, report_file = sys.argv[1], sys.argv[2]
    app = App(
        name=case,
        servers=[StreamServer(echo, name="main", port=0)],
        stop_timeout=10.0,
        report_file=report_file,
    )
    CASES[case](app)

    @app.after_start
    def ready() -> None:
        event("ready")

    app.run()


if __name__ == "__main__":
    main()
