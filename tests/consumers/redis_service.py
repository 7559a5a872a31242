"""A Redis Streams consumer App, for the subprocess tests (tests/consumers/test_redis_signals.py).

``python -m consumers.redis_service NAME REPORT_FILE --url URL --stream STREAM [options]``.

Each entry's fields decide what its handler does: ``sleep`` (seconds) waits that
long, ``hang`` waits for ever (unless ``--no-hang``), ``poison`` raises. With
``--dsn`` and ``--table`` it then inserts the entry's ``id`` field into that
table (``ON CONFLICT DO NOTHING``); an insert that hit the constraint prints
``EVENT duplicate <id>``. It prints ``EVENT handled <entry id> <delivery count>``
for each entry handled (unless ``--quiet``), ``EVENT progress <n>`` every 500,
and ``EVENT ready`` once the consumer reads.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg

from quiesce import App
from quiesce.consumers.message import Message
from quiesce.consumers.redis_stream import Fields, RedisStreamConsumer
from scenarios.events import event


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("report")
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", default="g")
    parser.add_argument("--consumer", default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--claim-idle", type=float, default=60.0)
    parser.add_argument("--max-deliveries", type=int, default=5)
    parser.add_argument("--dead-letter", default=None)
    parser.add_argument("--stop-timeout", type=float, default=None)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--reconnect-max", type=float, default=10.0)
    parser.add_argument("--call-timeout", type=float, default=5.0)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--table", default=None)
    parser.add_argument("--no-hang", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main() -> None:
    args = options(sys.argv[1:])
    app = App(name=args.name, stop_timeout=args.budget, report_file=args.report)
    # asyncpg's pool is made on the app's loop, hence a factory.
    pool = lambda: asyncpg.create_pool(args.dsn, min_size=4, max_size=16)  # noqa: E731
    db = app.resource(pool, name="db") if args.dsn else None
    handled = 0

    async def handle(message: Message[Fields]) -> None:
        nonlocal handled
        body = message.body
        if "sleep" in body:
            await asyncio.sleep(float(body["sleep"]))
        if "hang" in body and not args.no_hang:
            await asyncio.sleep(3600)
        if "poison" in body:
            raise ValueError(f"poison {body['poison']}")
        if db is not None:
            conn: Any = db.value
            insert = (
                f"INSERT INTO {args.table} (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id"
            )
            if await conn.fetchval(insert, body["id"]) is None:
                event(f"duplicate {body['id']}")
        handled += 1
        if not args.quiet:
            event(f"handled {message.id} {message.delivery_count}")
        if handled % 500 == 0:
            event(f"progress {handled}")

    consumer = RedisStreamConsumer(
        handle,
        url=args.url,
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        concurrency=args.concurrency,
        claim_idle=args.claim_idle,
        max_deliveries=args.max_deliveries,
        dead_letter=args.dead_letter,
        stop_timeout=args.stop_timeout,
        reconnect_max=args.reconnect_max,
        call_timeout=args.call_timeout,
        retry_delay=0.05,
    )
    app.add_server(consumer)

    @app.after_start
    def ready() -> None:
        event("ready")

    app.run()


if __name__ == "__main__":
    main()
