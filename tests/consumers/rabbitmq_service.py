"""A RabbitMQ consumer App for the signal tests, run as a real subprocess.

``python -m consumers.rabbitmq_service CASE REPORT_FILE URL QUEUE [ARGS...]``.
It prints ``EVENT <what> <monotonic time>`` lines, among them ``EVENT ready``
once the consumer is fetching, and the App's log lines.

Cases:
    ids DSN TABLE: insert each message id into TABLE through a pool resource;
        at the end ``EVENT inserted N`` and ``EVENT duplicates N`` (inserts that
        hit the primary key).
    hang: the message ``hang`` hangs on its first delivery, past the consumer's
        stop timeout (0.5 s); on a later one ``EVENT handled hang <count>``.
    poison DEAD: the message ``bad`` always raises (max_deliveries 3, then DEAD);
        the others ``EVENT handled <id>``.
    outage: ``EVENT handled <id>`` for each; the consumer's defaults except a short
        reconnect_max, and no stop_timeout of its own.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from quiesce import App
from quiesce.consumers import Message
from quiesce.consumers.rabbitmq import RabbitMQConsumer
from quiesce.postgres import postgres_pool
from scenarios.events import event

#: The App's stop budget in these cases.
STOP_TIMEOUT = 3.0


def ids(app: App, url: str, queue: str, dsn: str, table: str) -> None:
    db = app.resource(postgres_pool(dsn, min_size=1, max_size=16), name="db")
    counts = {"inserted": 0, "duplicates": 0}
    insert = f"INSERT INTO {table} (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id"

    async def handle(message: Message[bytes]) -> None:
        new = await db.value.fetchval(insert, message.id)
        counts["inserted" if new is not None else "duplicates"] += 1

    app.add_server(RabbitMQConsumer(handle, url=url, queue=queue, concurrency=16))

    @app.after_stop
    def tell() -> None:
        for what, n in counts.items():
            event(f"{what} {n}")


def hang(app: App, url: str, queue: str) -> None:
    async def handle(message: Message[bytes]) -> None:
        if message.id == "hang" and message.delivery_count == 1:
            event("hanging")
            await asyncio.Event().wait()  # ignores the stop: only the stop timeout ends it
        event(f"handled {message.id} {message.delivery_count}")

    app.add_server(RabbitMQConsumer(handle, url=url, queue=queue, stop_timeout=0.5))


def poison(app: App, url: str, queue: str, dead: str) -> None:
    async def handle(message: Message[bytes]) -> None:
        if message.id == "bad":
            event(f"failed bad {message.delivery_count}")
            raise ValueError("cannot parse")
        event(f"handled {message.id}")

    consumer = RabbitMQConsumer(handle, url=url, queue=queue, max_deliveries=3, dead_letter=dead)
    app.add_server(consumer)


def outage(app: App, url: str, queue: str) -> None:
    async def handle(message: Message[bytes]) -> None:
        event(f"handled {message.id}")

    app.add_server(RabbitMQConsumer(handle, url=url, queue=queue, reconnect_max=0.5))


CASES: dict[str, Callable[..., None]] = {f.__name__: f for f in (ids, hang, poison, outage)}


def main() -> None:
    case, report_file, *args = sys.argv[1:]
    app = App(name=case, stop_timeout=STOP_TIMEOUT, report_file=report_file)
    CASES[case](app, *args)

    @app.after_start
    def ready() -> None:
        event("ready")

    app.run()


if __name__ == "__main__":
    main()
