"""Requests/s of one unary method: through GatewayServer, direct, and through Starlette.

Through ``GatewayServer``, from a direct grpc.aio client, and through a hand-written
Starlette endpoint making the same call.

The method is the demo shop's ``shop.Shop/PlaceOrder`` (``examples/shop``), answered at once
by an upstream ``grpc.aio`` server in a process of its own. The three callers:

* ``gateway``: ``GatewayServer("127.0.0.1:<upstream>", routes={"POST /orders":
  "shop.Shop/PlaceOrder"})`` in an App, loaded by ``wrk`` POSTing a JSON order.
* ``direct``: a ``grpc.aio`` client with :data:`CONCURRENCY` callers on one channel (what a
  Python service calling the method itself gets).
* ``starlette``: the usual workaround, a Starlette route that parses the JSON, builds the
  request, awaits the call and answers ``MessageToDict(reply)``, served by the same
  ``HTTPServer``, loaded by the same ``wrk``.

The caller (gateway, Starlette app or direct client) runs pinned to core 0, the upstream and
wrk to core 1, so each caller has one core to itself and the upstream is the same for all.
Kinds alternate round by round; the medians and the two ratios are printed. Everything is on
loopback, every wait bounded, every process killed at the end.

Run: ``python bench/gateway_throughput.py [rounds] [seconds]`` (default 3 rounds of 3 s).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from stoptime import ROOT, serving

sys.path.insert(0, str(ROOT / "examples" / "shop"))  # the demo's generated code
import shop_pb2  # found through the line above
import shop_pb2_grpc

PY = sys.executable
HERE = str(Path(__file__).resolve())
CALLER_CPU, UPSTREAM_CPU = "0", "1"
CONNECTIONS = CONCURRENCY = 32
WARMUP = 1
ORDER = '{"item": "book", "quantity": 2}'
WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{ORDER}'
wrk.headers["Content-Type"] = "application/json"
"""


# -- the processes ------------------------------------------------------------------


def upstream(port: int) -> None:
    from quiesce.process import new_event_loop

    async def place_order(
        request: shop_pb2.OrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> shop_pb2.OrderReply:
        return shop_pb2.OrderReply(
            order_id="1", item=request.item, quantity=request.quantity, status="accepted"
        )

    handler = grpc.unary_unary_rpc_method_handler(
        place_order,
        request_deserializer=shop_pb2.OrderRequest.FromString,
        response_serializer=shop_pb2.OrderReply.SerializeToString,
    )

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("shop.Shop", {"PlaceOrder": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    new_event_loop().run_until_complete(main())


def gateway(upstream_port: int, port: int) -> None:
    # shop_pb2 is imported: the default descriptor pool has shop.Shop, as in an application.
    from quiesce import App
    from quiesce.gateway.server import GatewayServer

    routes = {"POST /orders": "shop.Shop/PlaceOrder"}
    server = GatewayServer(f"127.0.0.1:{upstream_port}", routes=routes, port=port, access_log=False)
    App(name="gateway", servers=[server]).run()


def starlette(upstream_port: int, port: int) -> None:
    from google.protobuf.json_format import MessageToDict
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from quiesce import App, HTTPServer

    channel: list[grpc.aio.Channel] = []

    async def place_order(request: Request) -> JSONResponse:
        if not channel:  # opened in the app's loop, at the first request
            channel.append(grpc.aio.insecure_channel(f"127.0.0.1:{upstream_port}"))
        stub = shop_pb2_grpc.ShopStub(channel[0])
        order = await request.json()
        reply = await stub.PlaceOrder(shop_pb2.OrderRequest(**order))
        return JSONResponse(MessageToDict(reply))

    api = Starlette(routes=[Route("/orders", place_order, methods=["POST"])])
    App(name="starlette", servers=[HTTPServer(api, port=port, access_log=False)]).run()


def direct(upstream_port: int, seconds: float) -> None:
    """Call as fast as CONCURRENCY callers can for ``seconds``; print ``RPS <n>``."""
    from quiesce.process import new_event_loop

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{upstream_port}") as channel:
            stub = shop_pb2_grpc.ShopStub(channel)
            request = shop_pb2.OrderRequest(item="book", quantity=2)
            await stub.PlaceOrder(request)
            end = time.monotonic() + seconds
            done = 0

            async def caller() -> None:
                nonlocal done
                while time.monotonic() < end:
                    await stub.PlaceOrder(request)
                    done += 1

            began = time.monotonic()
            await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
            print(f"RPS {done / (time.monotonic() - began):.1f}", flush=True)

    new_event_loop().run_until_complete(main())


# -- the driver ---------------------------------------------------------------------


def rps_of(command: Sequence[str], seconds: float, pattern: str) -> tuple[float, str]:
    """Run ``command`` (bounded); the number ``pattern`` finds in its output, and the output."""
    run = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True)
    found = re.search(pattern, run.stdout)
    if found is None:
        raise RuntimeError(f"{command[0]} said nothing we can read:\n{run.stdout}")
    return float(found.group(1)), run.stdout


def wrk(port: int, seconds: float, script: Path) -> float:
    rps, out = rps_of(
        [
            *("taskset", "-c", UPSTREAM_CPU),
            *("wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "2s"),
            *("-s", str(script), f"http://127.0.0.1:{port}/orders"),
        ],
        seconds,
        r"Requests/sec:\s+([\d.]+)",
    )
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps


def run_direct(upstream_port: int, seconds: float) -> float:
    command = [PY, HERE, "direct", str(upstream_port), f"{seconds:g}"]
    return rps_of(["taskset", "-c", CALLER_CPU, *command], seconds, r"RPS ([\d.]+)")[0]


def measure(rounds: int, seconds: float) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"gateway": [], "direct": [], "starlette": []}
    with tempfile.TemporaryDirectory() as tmp:  # owner-only, removed at the end
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        up = [PY, HERE, "upstream"]
        with serving(up, cpus=UPSTREAM_CPU) as (_, upstream_port):
            fronts = {
                kind: [PY, HERE, kind, str(upstream_port)] for kind in ("gateway", "starlette")
            }
            for i in range(rounds):
                kinds = ["gateway", "direct", "starlette"]
                kinds = kinds[i % 3 :] + kinds[: i % 3]  # who goes first moves round by round
                for kind in kinds:
                    if kind == "direct":
                        run_direct(upstream_port, WARMUP)
                        rps = run_direct(upstream_port, seconds)
                    else:
                        with serving(fronts[kind], cpus=CALLER_CPU) as (_, port):
                            wrk(port, WARMUP, script)
                            rps = wrk(port, seconds, script)
                    results[kind].append(rps)
                    print(f"round {i + 1} {kind:9} {rps:7.0f} req/s", flush=True)
    return results


def main(argv: Sequence[str]) -> None:
    if argv and argv[0] in ("upstream", "gateway", "starlette", "direct"):
        kind, *args = argv
        if kind == "upstream":
            upstream(int(args[0]))
        elif kind == "direct":
            direct(int(args[0]), float(args[1]))
        else:
            (gateway if kind == "gateway" else starlette)(int(args[0]), int(args[1]))
        return
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench/gateway_throughput.py needs wrk and taskset")
    rounds = int(argv[0]) if argv else 3
    seconds = float(argv[1]) if len(argv) > 1 else 3.0
    results = measure(rounds, seconds)
    median = {kind: statistics.median(values) for kind, values in results.items()}
    for kind, value in median.items():
        print(f"median {kind:9} {value:7.0f} req/s")
    print(f"gateway / direct grpc.aio  {median['gateway'] / median['direct']:.2f}x")
    print(f"gateway / Starlette        {median['gateway'] / median['starlette']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
