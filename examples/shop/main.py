"""The demo shop: HTTP, gRPC and a JSON gateway in one process, stopped without losing work.

``make demo`` runs it. Then, in another terminal::

    curl -s localhost:8000/readyz                                   # {"status": "ready", ...}
    curl -s -XPOST localhost:8000/orders -d '{"item": "book"}'      # an order; its receipt follows
    curl -s localhost:8000/orders                                   # every order so far
    curl -s 'localhost:8000/slow?seconds=3'                         # a slow request: try Ctrl+C now
    curl -s -XPOST localhost:8080/v1/orders -d '{"item": "pen", "quantity": 2}'  # JSON -> gRPC

Press Ctrl+C: readiness turns 503 and gRPC health NOT_SERVING at once, the
servers keep serving for the 2 s drain delay (responses say ``Connection:
close``), then stop — the gateway before the gRPC server it calls; the slow
request and the receipts still being "mailed" finish; the price refresher
stops between runs; the report is printed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import grpc
import shop_pb2
import shop_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from quiesce import App, GatewayServer, GRPCServer, HTTPServer

log = logging.getLogger("shop")

HOST = "127.0.0.1"
HTTP_PORT = int(os.environ.get("SHOP_HTTP_PORT", 8000))
GRPC_PORT = int(os.environ.get("SHOP_GRPC_PORT", 50051))
GATEWAY_PORT = int(os.environ.get("SHOP_GATEWAY_PORT", 8080))

app = App(name="shop", version="1.0.0", metadata={"zone": "local"}, drain_delay=2.0)


@dataclass
class Order:
    """One order, as both APIs return it."""

    order_id: str
    item: str
    quantity: int
    status: str = "accepted"


@dataclass
class Shop:
    """The shop's state: orders, prices, and who watches new orders."""

    orders: list[Order]
    prices: dict[str, float]
    watchers: set[asyncio.Queue[Order]]


@asynccontextmanager
async def open_shop() -> AsyncIterator[Shop]:
    state = Shop(orders=[], prices={"book": 12.0, "pen": 1.5}, watchers=set())
    log.info("shop opened")
    yield state
    log.info("shop closed with %d orders", len(state.orders))


shop = app.resource(open_shop, name="shop")
order_ids = itertools.count(1)


async def send_receipt(order: Order) -> None:
    await asyncio.sleep(2)  # a slow mail server
    log.info("receipt sent for order %s (%s x%d)", order.order_id, order.item, order.quantity)


def place_order(item: str, quantity: int) -> Order:
    order = Order(order_id=f"o-{next(order_ids)}", item=item, quantity=quantity)
    shop.value.orders.append(order)
    for queue in shop.value.watchers:
        queue.put_nowait(order)
    # Tracked: the stop waits for the receipt instead of dropping it.
    _ = app.spawn(send_receipt(order), name=f"receipt {order.order_id}")
    return order


# -- HTTP ---------------------------------------------------------------------------------------


async def create_order(request: Request) -> JSONResponse:
    body = await request.json()
    order = place_order(str(body.get("item", "")), int(body.get("quantity", 1)))
    return JSONResponse(asdict(order), status_code=201)


async def list_orders(request: Request) -> JSONResponse:
    return JSONResponse([asdict(o) for o in shop.value.orders])


async def slow(request: Request) -> JSONResponse:
    seconds = float(request.query_params.get("seconds", "3"))
    await asyncio.sleep(seconds)
    return JSONResponse({"slept": seconds})


api = Starlette(
    routes=[
        Route("/orders", create_order, methods=["POST"]),
        Route("/orders", list_orders, methods=["GET"]),
        Route("/slow", slow),
    ]
)


# -- gRPC ---------------------------------------------------------------------------------------


class ShopService(shop_pb2_grpc.ShopServicer):
    """The gRPC face of the shop."""

    async def PlaceOrder(
        self, request: shop_pb2.OrderRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> shop_pb2.OrderReply:
        """Place one order."""
        order = place_order(request.item, request.quantity or 1)
        return shop_pb2.OrderReply(**asdict(order))

    async def WatchOrders(
        self, request: shop_pb2.WatchRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[shop_pb2.OrderReply]:
        """Stream new orders until the client leaves or the shop stops."""
        queue: asyncio.Queue[Order] = asyncio.Queue()
        shop.value.watchers.add(queue)
        try:
            while not app.stopping.is_set():
                # Wake for the next order or for the stop, whichever comes first.
                next_order = asyncio.ensure_future(queue.get())
                stopping = asyncio.ensure_future(app.stopping.wait())
                done, pending = await asyncio.wait(
                    {next_order, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
                if next_order in done:
                    yield shop_pb2.OrderReply(**asdict(next_order.result()))
        finally:
            shop.value.watchers.discard(queue)


def make_grpc_server() -> grpc.aio.Server:
    server = grpc.aio.server()
    shop_pb2_grpc.add_ShopServicer_to_server(ShopService(), server)
    return server


app.add_server(HTTPServer(api, host=HOST, port=HTTP_PORT, name="http"))
app.add_server(GRPCServer(make_grpc_server, host=HOST, port=GRPC_PORT, name="grpc"))
# JSON over HTTP in front of the gRPC service: it depends on "grpc", so it stops first.
routes = {"POST /v1/orders": "shop.Shop/PlaceOrder"}
app.add_server(GatewayServer("grpc", routes=routes, host=HOST, port=GATEWAY_PORT, name="gateway"))


# -- jobs and hooks -----------------------------------------------------------------------------


async def refresh_prices() -> None:
    await asyncio.sleep(0.5)  # pretend to ask a supplier
    shop.value.prices["book"] = round(shop.value.prices["book"] * 1.01, 2)
    log.info("prices refreshed: %s", shop.value.prices)


app.every(10, refresh_prices)


@app.after_start
def announce() -> None:
    log.info("shop ready on %s; Ctrl+C to stop", ", ".join(app.info.endpoints))


@app.before_stop
def wrap_up() -> None:
    log.info(
        "stop begun after %d orders; draining for %ss", len(shop.value.orders), app.drain_delay
    )


if __name__ == "__main__":
    app.run()
