r"""A small order service that uses every lifecycle feature of quiesce.

Run it with ``make demo`` (or ``python examples/orders.py``), then::

    printf 'ORDER book\n' | nc -q1 127.0.0.1 7000   # place an order; its receipt is sent later
    printf 'STATUS\n' | nc -q1 127.0.0.1 7001       # the admin port answers ready / draining

Press Ctrl+C: the app goes not-ready, drains for a second, stops both servers,
waits for the receipts still being sent, stops the periodic job between runs,
runs the after_stop hook, closes the inventory, and prints the stop report.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from quiesce import App, State
from quiesce.servers.stream import StreamServer

log = logging.getLogger("orders")

app = App(name="orders", version="1.0.0", metadata={"zone": "local"}, drain_delay=1.0)


@asynccontextmanager
async def open_inventory() -> AsyncIterator[dict[str, int]]:
    log.info("inventory opened")
    yield {"book": 10, "pen": 100}
    log.info("inventory closed")


inventory = app.resource(open_inventory, name="inventory")
order_ids = itertools.count(1)


async def send_receipt(order_id: int, item: str) -> None:
    await asyncio.sleep(2)  # a slow mail server
    log.info("receipt sent for order %d (%s)", order_id, item)


async def handle_orders(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        verb, _, item = line.decode().strip().partition(" ")
        if verb != "ORDER" or not item:
            writer.write(b"ERR say: ORDER <item>\n")
        elif inventory.value.get(item, 0) <= 0:
            writer.write(b"ERR sold out\n")
        else:
            inventory.value[item] -= 1
            order_id = next(order_ids)
            # Tracked: the stop waits for the receipt instead of dropping it.
            _ = app.spawn(send_receipt(order_id, item), name=f"receipt-{order_id}")
            writer.write(f"OK {order_id}\n".encode())
        await writer.drain()


async def handle_admin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    state = "ready" if app.state is State.RUNNING else "draining"
    writer.write(f"{state}\n".encode())
    await writer.drain()


host = "127.0.0.1"
app.add_server(
    StreamServer(
        handle_orders, host=host, port=int(os.environ.get("ORDERS_PORT", 7000)), name="api"
    )
)
app.add_server(
    StreamServer(
        handle_admin, host=host, port=int(os.environ.get("ADMIN_PORT", 7001)), name="admin"
    )
)


async def refresh_prices() -> None:
    await asyncio.sleep(0.5)
    log.info("prices refreshed")


app.every(10, refresh_prices)


@app.before_start
def warm_cache() -> None:
    log.info("cache warmed")


@app.after_start
def announce() -> None:
    log.info("ready: %s — press Ctrl+C to stop", ", ".join(app.info.endpoints))


@app.before_stop
async def flush() -> None:
    log.info("flushing the write-behind cache")


@app.after_stop
def goodbye() -> None:
    log.info("all orders accounted for: %s left in stock", inventory.value)


if __name__ == "__main__":
    app.run()
