"""Services for the lifecycle scenario tests, run as real subprocesses.

``python -m tests.scenarios.lifecycle CASE REPORT_FILE [PORT]``. Each case
prints ``EVENT <what> <monotonic time>`` lines that the tests read; the app
itself logs on stderr. Servers bind real loopback sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from quiesce import App
from quiesce.servers.stream import StreamServer
from scenarios.events import event


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()


class ProbeServer(StreamServer):
    """A real TCP server that reports its start and stop and can be slow or fail."""

    def __init__(
        self,
        name: str,
        *,
        depends_on: Sequence[str] = (),
        port: int = 0,
        start_delay: float = 0.0,
        stop_delay: float = 0.0,
        fail: bool = False,
    ) -> None:
        super().__init__(echo, name=name, depends_on=depends_on, port=port)
        self.start_delay = start_delay
        self.stop_delay = stop_delay
        self.fail = fail

    async def start(self) -> None:
        event(f"start-begin {self.name}")
        await asyncio.sleep(self.start_delay)
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start on purpose")
        await super().start()
        event(f"start-end {self.name}")

    async def stop(self, timeout: float) -> list[str]:
        event(f"stop-begin {self.name}")
        await asyncio.sleep(self.stop_delay)
        cut = await super().stop(timeout)
        event(f"stop-end {self.name}")
        return cut


def spawn_task(app: App) -> None:
    async def send_receipt() -> None:
        await asyncio.sleep(2)
        event("task-done")

    async def handler() -> None:
        _ = app.spawn(send_receipt(), name="send_receipt")
        event("spawned")

    @app.after_start
    async def simulate_request() -> None:
        await handler()


def stopping_hook(app: App) -> None:
    app.hook_timeout = 3.0

    async def long_poll() -> None:
        await app.stopping
        event("saw-stopping")

    @app.after_start
    def begin_long_poll() -> None:
        _ = app.spawn(long_poll(), name="long_poll")

    @app.before_stop
    async def flush_cache() -> None:
        event("flush-begin")
        await asyncio.sleep(1.5)
        event("flush-end")


def hanging_hook(app: App) -> None:
    @app.before_stop
    async def first() -> None:
        event("hook-first")

    @app.before_stop
    async def hangs_forever() -> None:
        event("hook-hang-begin")
        await asyncio.Event().wait()

    @app.before_stop
    def third_sync() -> None:
        event("hook-third")


def long_drain(app: App) -> None:
    app.drain_delay = 20.0
    app.stop_timeout = 30.0

    async def reconcile() -> None:
        await asyncio.sleep(60)

    @app.after_start
    def begin() -> None:
        _ = app.spawn(reconcile(), name="reconcile")


def failed_task_long_drain(app: App) -> None:
    long_drain(app)

    async def charge_card() -> None:
        raise ValueError("card declined")

    @app.after_start
    def begin_charge() -> None:
        _ = app.spawn(charge_card(), name="charge_card")


def one_fails(app: App) -> None:
    app.servers = [
        ProbeServer("good", start_delay=0.0),
        ProbeServer("bad", start_delay=0.2, fail=True),
    ]


def port_in_use(app: App) -> None:
    app.servers = [ProbeServer("good"), ProbeServer("busy", port=int(sys.argv[3]))]


def cycle(app: App) -> None:
    app.servers = [
        ProbeServer("a", depends_on=["b"]),
        ProbeServer("b", depends_on=["a"]),
        ProbeServer("c"),
    ]


def slow_before_start(app: App) -> None:
    @app.before_start
    async def warm_up() -> None:
        event("warm-up-begin")
        await asyncio.sleep(30)
        event("warm-up-end")

    @asynccontextmanager
    async def pool() -> AsyncIterator[str]:
        event("pool-open")
        yield "pool"
        event("pool-closed")

    app.resource(pool)


def chain(app: App) -> None:
    app.servers = [
        ProbeServer("a", depends_on=["b"], start_delay=0.1, stop_delay=0.1),
        ProbeServer("b", depends_on=["c"], start_delay=0.1, stop_delay=0.1),
        ProbeServer("c", start_delay=0.1, stop_delay=0.1),
    ]


def independent(app: App) -> None:
    app.servers = [ProbeServer("x", stop_delay=1.0), ProbeServer("y", stop_delay=1.0)]


def periodic(app: App) -> None:
    runs = 0

    async def refresh_prices() -> None:
        nonlocal runs
        runs += 1
        n = runs
        event(f"run-begin {n}")
        await asyncio.sleep(1.0)
        event(f"run-end {n}")

    app.every(0.2, refresh_prices)


def resources(app: App) -> None:
    def make(name: str) -> Callable[[], Any]:
        @asynccontextmanager
        async def resource() -> AsyncIterator[str]:
            event(f"open {name}")
            yield name
            event(f"close {name}")

        return resource

    db = app.resource(make("db"), name="db")
    app.resource(make("cache"), name="cache", depends_on=["db"])
    app.resource(make("queue"), name="queue")

    @app.after_start
    def use() -> None:
        event(f"value {db.value}")

    @app.after_stop
    def after() -> None:
        event("after-stop")


def stubborn_task(app: App) -> None:
    app.stop_timeout = 2.0

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                event("ignored-cancel")

    @app.after_start
    def begin() -> None:
        _ = app.spawn(stubborn(), name="stubborn")


def file_registry(app: App) -> str:
    """Register in a file registry beside the report file; returns its directory."""
    assert app.report_file is not None
    folder = Path(app.report_file).parent / "registry"
    app.registry = f"file://{folder}"
    return str(folder)


def blocked_loop(app: App) -> None:
    app.stop_timeout = 1.0
    file_registry(app)

    async def blocks_the_loop() -> None:
        await app.stopping
        event("blocking")
        time.sleep(30)  # noqa: ASYNC251 - the bug under test: a sync call blocks the loop

    @app.after_start
    def begin() -> None:
        _ = app.spawn(blocks_the_loop(), name="blocks_the_loop")


def flooded_then_blocked(app: App) -> None:
    """Fill the log stream (the test never reads it), then block the loop at the stop."""
    blocked_loop(app)
    flood = logging.getLogger("flood")

    @app.after_start
    def log_a_lot() -> None:
        for i in range(3000):  # ~300 kB: more than the pipe and the log queue hold
            flood.warning("line %d %s", i, "x" * 80)


def blocked_start(app: App) -> None:
    app.start_timeout = 1.0

    @app.before_start
    async def warm_up() -> None:
        event("warm-up-begin")
        time.sleep(1000)  # noqa: ASYNC251 - the bug under test: a sync call blocks the start


def swallowing_hook(app: App) -> None:
    app.stop_timeout = 1.0
    app.hook_timeout = 10.0  # the default: the stop's own bound must still end it
    file_registry(app)

    @app.before_stop
    async def refuses_to_stop() -> None:
        event("hook-begin")
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                event("swallowed")


#: Untracked tasks of a case, held so that they are not garbage-collected.
UNTRACKED: set[asyncio.Task[None]] = set()


def late_leftover(app: App) -> None:
    async def untracked() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # Still unwinding (within cancel_grace) after the report: a window for a signal.
            event("leftover-cancelled")
            await asyncio.sleep(0.4)

    @app.after_start
    async def begin() -> None:
        UNTRACKED.add(asyncio.create_task(untracked()))

    @app.after_stop
    def after() -> None:
        event("after-stop")


def idle(app: App) -> None:
    """Nothing but the probe server: for signals the app must not stop on."""


def uncatchable(app: App) -> None:
    app.signals = [signal.SIGTERM, signal.SIGKILL]


def no_servers(app: App) -> None:
    app.servers = None  # type: ignore[assignment]  # the user's mistake under test


def unwritable_report(app: App) -> None:
    app.report_file = "/nonexistent-quiesce-dir/report.json"


CASES: dict[str, Callable[[App], None]] = {
    f.__name__: f
    for f in (
        spawn_task,
        stopping_hook,
        hanging_hook,
        long_drain,
        failed_task_long_drain,
        one_fails,
        port_in_use,
        cycle,
        slow_before_start,
        chain,
        independent,
        periodic,
        resources,
        stubborn_task,
        blocked_loop,
        flooded_then_blocked,
        blocked_start,
        swallowing_hook,
        late_leftover,
        idle,
        uncatchable,
        no_servers,
        unwritable_report,
    )
}


def run_case(app: App, case: Callable[[App], None]) -> None:
    """Apply ``case`` to ``app``, announce readiness with an event, run until stopped."""
    case(app)

    @app.after_start
    def ready() -> None:
        event("ready")

    app.run()


def main() -> None:
    case, report_file = sys.argv[1], sys.argv[2]
    app = App(
        name=case,
        servers=[ProbeServer("main")],
        hook_timeout=0.5,
        stop_timeout=10.0,
        report_file=report_file,
        # The golden test compares the log lines with and without the log queue.
        log_queue=False if os.environ.get("QUIESCE_TEST_LOG_QUEUE") == "0" else None,
    )
    run_case(app, CASES[case])


if __name__ == "__main__":
    main()
