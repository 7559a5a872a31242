"""GatewayServer in one App with a real GRPCServer, called with a real HTTP client (issue 11)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from starlette.applications import Starlette

from conftest import free_ports
from gateway.bookstore_service import SLEEPY, Bookstore, bookstore_server, running
from quiesce import App, ConfigError, DependencyCycleError, ExitCode, GRPCServer, HTTPServer
from quiesce.gateway.server import GatewayServer


@dataclass
class Running:
    url: str
    servicer: Bookstore
    app: App


@pytest.fixture
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    """The bookstore behind a gateway; an indirect parametrize of ``store`` gives its options."""
    options: dict[str, Any] = getattr(request, "param", {})
    servicer = Bookstore()
    gateway = GatewayServer("grpc", port=0, access_log=False, **options)
    app = App(
        name="store",
        servers=[GRPCServer(lambda: bookstore_server(servicer), port=0), gateway],
    )
    async with running(app):
        yield Running(gateway.endpoints()[0], servicer, app)
    assert app.report.exit_code == ExitCode.OK, app.report.to_text()


def body(response: httpx.Response) -> Any:
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def test_gateway_maps_path_query_and_body_to_the_request(store: Running) -> None:
    async with httpx.AsyncClient(base_url=store.url) as client:
        got = await client.get("/v1/shelves/7/books/12")
        assert got.status_code == 200, got.text
        book = body(got)
        assert book["name"] == "shelves/7/books/12"
        assert book["author"] == {"name": "bookstore", "born": 0}
        assert book["inPrint"] is False, "fields without presence are printed, camelCase"

        listed = await client.get(
            "/v1/shelves/3/books", params=[("pageSize", 2), ("tags", "a"), ("tags", "b")]
        )
        assert listed.status_code == 200, listed.text
        books = body(listed)["books"]
        assert [b["name"] for b in books] == ["shelves/3/books/0", "shelves/3/books/1"]
        assert all(b["tags"] == ["a", "b"] for b in books)
        nested = await client.get("/v1/shelves/3/books", params={"author.name": "ann"})
        assert body(nested)["nextPageToken"] == "ann"

        created = await client.post(
            "/v1/shelves/5/books", params={"requestId": "r1"}, json={"title": "T", "tags": ["x"]}
        )
        assert created.status_code == 200, created.text
        book = body(created)
        assert (book["name"], book["title"], book["tags"]) == ("shelves/5/books/r1", "T", ["x"])

        # An additional binding reaches the same method.
        again = await client.get("/v2/shelves/7/books/12")
        assert body(again)["name"] == "shelves/7/books/12"


async def test_gateway_maps_grpc_statuses_to_http_with_the_error_body(store: Running) -> None:
    async with httpx.AsyncClient(base_url=store.url) as client:
        missing = await client.get("/v1/shelves/1/books/404")
        assert missing.status_code == 404
        assert body(missing) == {"code": 5, "message": "no book 404", "details": []}
        moving = await client.get("/v1/shelves/1/books/503")
        assert moving.status_code == 503
        assert moving.headers["retry-after"] == "1"
        assert body(moving) == {"code": 14, "message": "the shelf is being moved", "details": []}


async def test_gateway_answers_404_and_405_for_routes_it_does_not_have(store: Running) -> None:
    async with httpx.AsyncClient(base_url=store.url) as client:
        unknown = await client.get("/v1/nowhere")
        assert unknown.status_code == 404
        assert body(unknown)["code"] == 5
        wrong = await client.put("/v1/shelves/1/books", json={})
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, POST"
        bad = await client.post("/v1/shelves/1/books", content=b"{not json")
        assert bad.status_code == 400
        assert body(bad)["code"] == 3


async def test_gateway_forwards_the_listed_headers_as_metadata(store: Running) -> None:
    headers = {
        "Authorization": "Bearer t0ken",
        "X-Request-Id": "req-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Not-Forwarded": "no",
    }
    async with httpx.AsyncClient(base_url=store.url) as client:
        got = await client.get("/v1/shelves/1/books/2", headers=headers)
    assert body(got)["labels"] == {
        "authorization": "Bearer t0ken",
        "x-request-id": "req-1",
        "traceparent": headers["traceparent"],
    }


async def test_gateway_refuses_a_forwarded_value_grpc_cannot_carry(store: Running) -> None:
    async with httpx.AsyncClient(base_url=store.url) as client:
        got = await client.get("/v1/shelves/1/books/2", headers={b"authorization": b"caf\xe9"})
    assert got.status_code == 400
    assert "'authorization'" in body(got)["message"]


@pytest.mark.parametrize("store", [{"forward_headers": ["X-Tenant"]}], indirect=True)
async def test_gateway_forwards_only_the_headers_given(store: Running) -> None:
    async with httpx.AsyncClient(base_url=store.url) as client:
        got = await client.get(
            "/v1/shelves/1/books/2", headers={"X-Tenant": "acme", "Authorization": "x"}
        )
    assert body(got)["labels"] == {"x-tenant": "acme"}


async def test_gateway_client_disconnect_cancels_the_call(store: Running) -> None:
    client = httpx.AsyncClient(base_url=store.url)
    request = asyncio.create_task(client.get(f"/v1/shelves/1/books/{SLEEPY + 30_000}"))
    try:
        async with asyncio.timeout(5):
            await store.servicer.sleeping.wait()
        request.cancel()  # the client gives up: httpx closes the connection
        await client.aclose()
        async with asyncio.timeout(5):
            await store.servicer.cancelled.wait()
    finally:
        request.cancel()
        await client.aclose()


@pytest.mark.parametrize("store", [{"timeout": 0.2}], indirect=True)
async def test_gateway_timeout_is_the_call_deadline(store: Running) -> None:
    async with httpx.AsyncClient(base_url=store.url, timeout=10) as client:
        began = time.monotonic()
        late = await client.get(f"/v1/shelves/1/books/{SLEEPY + 5_000}")
        took = time.monotonic() - began
        assert late.status_code == 504, late.text
        assert body(late)["code"] == 4
        assert took < 2.0, "answered at the deadline, not when the call would have ended"
        async with asyncio.timeout(5):
            await store.servicer.cancelled.wait()
        quick = await client.get("/v1/shelves/1/books/2")
        assert quick.status_code == 200


ROUTES = {
    "POST /v1/restock": ("bookstore.Bookstore/Restock", 0.3),
    "GET /v1/restock/{name}": "bookstore.Bookstore/Restock",
    "GET /watch": "grpc.health.v1.Health/Watch",
    "GET /nothing": "bookstore.Bookstore/Nothing",
}


@pytest.mark.parametrize("store", [{"routes": ROUTES}], indirect=True)
async def test_gateway_explicit_routes_with_their_own_timeout(store: Running) -> None:
    async with httpx.AsyncClient(base_url=store.url) as client:
        done = await client.post("/v1/restock", json={"count": 1})
        assert body(done) == {"inStock": 1}
        late = await client.post("/v1/restock", json={"count": 3_000})
        assert late.status_code == 504, "the route's own timeout (no default)"
        query = await client.get("/v1/restock/ink", params={"count": 2})
        assert body(query) == {"inStock": 2}
        # The annotated routes are served next to the explicit ones.
        assert (await client.get("/v1/shelves/1/books/2")).status_code == 200
        streaming = await client.get("/watch")
        assert streaming.status_code == 501
        assert "unary methods only" in body(streaming)["message"]
        unknown = await client.get("/nothing")
        assert unknown.status_code == 501
        assert "bookstore.Bookstore/Nothing" in body(unknown)["message"]


async def test_gateway_keeps_the_http_server_probes_and_counts_arrivals(store: Running) -> None:
    lifecycle = store.app.lifecycle
    async with httpx.AsyncClient(base_url=store.url) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        before = lifecycle.arrivals  # the client's connection counted, the probe not
        await client.get("/v1/shelves/1/books/2")
        await client.get("/v1/nowhere")
        # Each request is traffic for the drain, and so is the call the gRPC server got.
        assert lifecycle.arrivals == before + 2 + 1


async def test_gateway_upstream_not_up_yet_answers_503_then_serves() -> None:
    (port,) = free_ports(1)
    gateway = GatewayServer(f"127.0.0.1:{port}", port=0, access_log=False)
    app = App(name="edge", servers=[gateway])
    async with running(app), httpx.AsyncClient(base_url=gateway.endpoints()[0]) as client:
        early = await client.get("/v1/shelves/1/books/2")
        assert early.status_code == 503, early.text
        assert early.headers["retry-after"] == "1"
        assert body(early)["code"] == 14
        assert f"127.0.0.1:{port}" in body(early)["message"]

        upstream = bookstore_server(Bookstore())  # no reflection: the imported _pb2 serve
        upstream.add_insecure_port(f"127.0.0.1:{port}")
        await upstream.start()
        try:
            up = time.monotonic()
            answers = []
            for _ in range(20):  # bounded: Retry-After is 1 s, the channel retries within it
                got = await client.get("/v1/shelves/1/books/2")
                answers.append(got.status_code)
                if got.status_code != 503:
                    break
                await asyncio.sleep(float(got.headers["retry-after"]) / 4)
            assert answers[-1] == 200, answers
            assert time.monotonic() - up < 3.0, answers
        finally:
            await upstream.stop(None)
    assert app.report.exit_code == ExitCode.OK, app.report.to_text()


async def test_gateway_serves_alone_without_an_app() -> None:
    (port,) = free_ports(1)
    gateway = GatewayServer(f"127.0.0.1:{port}", port=0, access_log=False)
    await gateway.start()
    try:
        async with httpx.AsyncClient(base_url=gateway.endpoints()[0]) as client:
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/v1/shelves/1/books/2")).status_code == 503
    finally:
        assert await gateway.stop(1.0) == []
    with pytest.raises(ConfigError, match="upstream='grpc' is no server of this App"):
        await GatewayServer("grpc", port=0).start()


def test_gateway_defaults() -> None:
    gateway = GatewayServer("grpc")
    assert (gateway.host, gateway.port, gateway.name) == ("127.0.0.1", 8080, "gateway")
    assert gateway.depends_on == ("grpc",)
    assert gateway.forward_headers == ("authorization", "x-request-id", "traceparent")
    assert gateway.timeout is None
    assert gateway.stop_timeout is None
    assert GatewayServer("127.0.0.1:9000").depends_on == ()
    assert GatewayServer("registry:orders", depends_on=["db"]).depends_on == ("db",)


def grpc_server() -> GRPCServer:
    return GRPCServer(grpc.aio.server, port=0)


@pytest.mark.parametrize(
    ("upstream", "says"),
    [
        ("nowhere", "depends on unknown 'nowhere'"),
        ("web", "upstream='web' is a HTTPServer of this App"),
        ("localhost:99999", "port '99999' must be an integer from 1 to 65535"),
        ("::1:9000", "[address]:port"),
        ("registry:", "needs a SERVICE name"),
        ("registry:orders", "needs the App's registry"),
        ("", "must be a GRPCServer's name, host:port or registry:SERVICE"),
    ],
)
def test_gateway_bad_upstream_is_a_config_error(upstream: str, says: str) -> None:
    web = HTTPServer(Starlette(), name="web", port=0)
    app = App(name="edge", servers=[grpc_server(), web, GatewayServer(upstream, port=0)])
    with pytest.raises(ConfigError) as error:
        app.check()
    assert says in str(error.value)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"timeout": 0}, "timeout=0"),
        ({"forward_headers": ["ok", 3]}, "3 must be a header name"),
        ({"forward_headers": ["grpc-timeout"]}, "'grpc-timeout' must be a header name"),
        ({"forward_headers": ["x-trace-bin"]}, "(not grpc-*, *-bin)"),
        ({"forward_headers": ["X Tenant"]}, "'X Tenant' must be a header name"),
        ({"routes": {"GET /x": ("bookstore.Bookstore/GetBook", -1)}}, "timeout=-1"),
        ({"routes": {"GET /x": 3}}, "routes['GET /x']=3"),
        ({"routes": "GET /x"}, "must be a dict of routes or a list of Route"),
    ],
)
def test_gateway_bad_option_is_a_config_error(options: dict[str, Any], says: str) -> None:
    app = App(name="edge", servers=[grpc_server(), GatewayServer("grpc", port=0, **options)])
    with pytest.raises(ConfigError) as error:
        app.check()
    assert says in str(error.value)


async def test_gateway_implicit_dependency_in_a_cycle_is_exit_2() -> None:
    upstream = GRPCServer(grpc.aio.server, port=0, depends_on=["gateway"])
    app = App(name="edge", servers=[upstream, GatewayServer("grpc", port=0)])
    with pytest.raises(DependencyCycleError) as error:
        app.check()
    assert "gateway -> grpc -> gateway" in str(error.value) or "grpc -> gateway -> grpc" in str(
        error.value
    )
    report = await App(name="edge", servers=[upstream, GatewayServer("grpc", port=0)]).serve()
    assert report.exit_code == ExitCode.CONFIG
