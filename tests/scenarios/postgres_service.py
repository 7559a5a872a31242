"""A service that writes to PostgreSQL through ``quiesce.postgres``, run as a real subprocess.

``python -m tests.scenarios.postgres_service CASE REPORT_FILE DSN TABLE``. A TCP
handler takes a pooled connection for each line it reads, waits for the stop
to begin, then inserts the line into TABLE and answers ``ok``: a write in
flight at SIGTERM. Prints ``EVENT <what> <monotonic time>`` lines.
"""

from __future__ import annotations

import asyncio
import sys

from quiesce import App
from quiesce.postgres import postgres_pool
from quiesce.servers.stream import StreamServer
from scenarios.events import event

#: How long the write in flight still takes once the stop has begun.
WORK = 0.3


def main() -> None:
    case, report_file, dsn, table = sys.argv[1:5]
    app = App(name=case, stop_timeout=10.0, report_file=report_file)
    db = app.resource(postgres_pool(dsn, min_size=1, max_size=4), name="db", close_timeout=5)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().strip()
        async with db.value.acquire() as conn:
            event("acquired")
            await app.stopping
            await asyncio.sleep(WORK)
            await conn.execute(f"INSERT INTO {table} (line) VALUES ($1)", line)
            event("written")
        writer.write(b"ok\n")
        await writer.drain()

    server = StreamServer(handler, name="tcp", port=0)
    app.add_server(server)

    @app.before_start
    async def pool_is_open() -> None:
        event(f"pool-open {await db.value.fetchval('SELECT 1')}")

    @app.after_start
    def ready() -> None:
        event(f"ready {server.port}")

    @app.after_stop
    def servers_done() -> None:
        event(f"after-stop pool-closing={db.value.pool.is_closing()}")

    app.run()


if __name__ == "__main__":
    main()
