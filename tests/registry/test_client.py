"""The discovery client against real uvicorn servers (HTTPServer in Apps) and real registries.

Each test runs its own event loop, uvloop when installed as ``App.run()``
does: on asyncio's default loop an HTTPServer answer waits ~40 ms for a
delayed ACK (its listening socket is made without IPPROTO_TCP, so asyncio
never sets TCP_NODELAY), which would blur the millisecond timings here.
Apps run in-process with ``signals=()``: several of them share the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Route

from conftest import free_ports
from quiesce import App, ExitCode, HTTPServer, Report
from quiesce.client import PLACEHOLDER_HOST, AsyncClient, NoInstanceError, http_endpoint
from quiesce.errors import ConfigError
from quiesce.process import new_event_loop
from quiesce.registry import Instance, from_url

from .conftest import backend_url, make_tls

T = TypeVar("T")

#: Bound on one scenario (its own event loop), far above what each needs.
SCENARIO_TIMEOUT = 20.0
#: Bound on an in-process App becoming ready, and on it stopping.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
#: How soon after an App's stop begins the client must stop sending it requests: the
#: deregistration, the watch's notice (etcd pushes; the file registry here polls every
#: 10 ms) and the loop's own latency. etcd alone measured 2-16 ms on these machines.
NOTICE = 0.1
#: Drain delay of the instance being stopped: it must outlast the notice comfortably.
DRAIN = 0.5


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``scenario()`` in a fresh event loop, bounded."""

    async def bounded() -> T:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            return await scenario()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(bounded())


@pytest.fixture(params=["file", "etcd"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry of the test's own, on each backend."""
    return backend_url(request, tmp_path)


@pytest.fixture
def file_url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/registry?poll=0.01"


@dataclass
class Running:
    app: App
    task: asyncio.Task[Report]

    @property
    def endpoint(self) -> str:
        return self.app.info.endpoints[0]


@asynccontextmanager
async def serving(
    url: str | None, ident: str, *, drain_delay: float = 0.0, port: int = 0, **uvicorn: Any
) -> AsyncIterator[Running]:
    """An App named ``orders`` with a real HTTPServer; every path answers with the App's id."""

    async def whoami(request: Request) -> PlainTextResponse:
        cookie = request.cookies.get("session", "-")
        return PlainTextResponse(ident, headers={"x-path": request.url.path, "x-cookie": cookie})

    async def moved(request: Request) -> RedirectResponse:
        return RedirectResponse("/moved-here")  # relative, as most apps write it

    async def login(request: Request) -> PlainTextResponse:
        response = PlainTextResponse(ident)
        response.set_cookie("session", f"from-{ident}")
        return response

    api = Starlette(
        routes=[
            Route("/moved", moved),
            Route("/login", login),
            Route("/{path:path}", whoami, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )
    server = HTTPServer(api, port=port, access_log=False, **uvicorn)
    app = App(
        name="orders",
        id=ident,
        servers=[server],
        registry=url,
        signals=(),
        drain_delay=drain_delay,
        stop_timeout=5.0,
    )
    task = asyncio.create_task(app.serve())
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait({task, ready}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if not app.ready.is_set():
        app.stop()
        report = await asyncio.wait_for(task, STOP_TIMEOUT)
        raise AssertionError(f"app {ident} did not start: {report.error}")
    try:
        yield Running(app, task)
    finally:
        app.stop()
        report = await asyncio.wait_for(task, STOP_TIMEOUT)
        assert report.exit_code == ExitCode.OK, report.to_text()


@asynccontextmanager
async def registered(url: str, instance: Instance) -> AsyncIterator[None]:
    """``instance`` registered in the registry at ``url`` directly (an endpoint we control)."""
    registry = from_url(url)
    await registry.register(instance)
    try:
        yield
    finally:
        await registry.deregister(instance)
        await registry.aclose()


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused."""
    (port,) = free_ports(1)
    return port


def ejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "ejected" in r.getMessage()]


# -- balancing ------------------------------------------------------------------------


def test_client_round_robin_spreads_requests_evenly_across_instances(registry_url: str) -> None:
    async def scenario() -> list[str]:
        async with (
            serving(registry_url, "a"),
            serving(registry_url, "b"),
            serving(registry_url, "c"),
            AsyncClient(service="orders", registry=registry_url) as client,
        ):
            answers = []
            for _ in range(30):
                response = await client.get("/orders/1")
                assert response.status_code == 200
                assert response.extensions["quiesce.instance"].id == response.text
                assert response.headers["x-path"] == "/orders/1"
                answers.append(response.text)
            assert sorted(i.id for i in client.instances) == ["a", "b", "c"]
            return answers

    answers = run(scenario)
    assert {who: answers.count(who) for who in "abc"} == {"a": 10, "b": 10, "c": 10}
    # Strict rotation: never the same instance twice in a row.
    assert all(x != y for x, y in itertools.pairwise(answers))


def test_client_drops_an_instance_within_milliseconds_of_its_stop_beginning(
    registry_url: str,
) -> None:
    sent: list[tuple[float, str]] = []  # (monotonic time the request was sent, who answered)
    failures: list[BaseException] = []

    async def scenario() -> tuple[float, float]:
        async with (
            serving(registry_url, "a", drain_delay=DRAIN) as a,
            serving(registry_url, "b"),
            AsyncClient(service="orders", registry=registry_url) as client,
        ):
            warm = asyncio.Event()
            done = asyncio.Event()

            async def worker() -> None:
                while not done.is_set():
                    at = time.monotonic()
                    try:
                        response = await client.get("/")
                    except httpx.HTTPError as exc:
                        failures.append(exc)
                        continue
                    sent.append((at, response.text))
                    if len(sent) >= 40:
                        warm.set()

            workers = [asyncio.create_task(worker()) for _ in range(4)]
            await asyncio.wait_for(warm.wait(), START_TIMEOUT)
            began = time.monotonic()
            a.app.stop()
            # A keeps serving through its drain delay; wait until it has closed.
            await asyncio.wait_for(asyncio.shield(a.task), STOP_TIMEOUT)
            closed = time.monotonic()
            done.set()
            await asyncio.gather(*workers)
            return began, closed

    began, closed = run(scenario)
    assert failures == []
    last_to_a = max(at for at, who in sent if who == "a")
    print(f"last request to a: {1000 * (last_to_a - began):.1f} ms after its stop began")
    assert last_to_a - began < NOTICE
    # The rest of a's drain delay went unused: every request went to b meanwhile.
    after = [who for at, who in sent if began + NOTICE <= at <= closed]
    assert after, "the workers kept sending during a's drain"
    assert set(after) == {"b"}
    assert closed - began >= DRAIN


# -- failures ------------------------------------------------------------------------


def test_client_retries_a_refused_connection_on_another_instance_even_for_post(
    registry_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="quiesce.client")
    dead = Instance(id="a-dead", name="orders", endpoints=(f"http://127.0.0.1:{closed_port()}",))

    async def scenario() -> list[str]:
        async with (
            registered(registry_url, dead),
            serving(registry_url, "b-live"),
            AsyncClient(service="orders", registry=registry_url, ejection_threshold=100) as client,
        ):
            answers = [(await client.post("/orders", json={"n": n})).text for n in range(6)]
            assert [i.id for i in client.instances] == ["a-dead", "b-live"]
            return answers

    assert run(scenario) == ["b-live"] * 6
    retried = [r.getMessage() for r in caplog.records if "trying another" in r.getMessage()]
    # Every second request was sent to the dead instance first (round-robin), then retried.
    assert len(retried) == 3
    assert all("'a-dead'" in line and "ConnectError" in line for line in retried)


async def _cutter(seen: list[str]) -> asyncio.Server:
    """A real TCP server that reads each request in full and closes without answering."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        seen.append(head.split(b" ", 1)[0].decode())
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(cut, "127.0.0.1", 0)


def test_client_retries_get_but_not_post_after_a_disconnect_without_response(
    registry_url: str,
) -> None:
    seen: list[str] = []
    disconnects = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)

    async def streamed() -> AsyncIterator[bytes]:
        yield b"{}"

    async def scenario() -> tuple[list[str], list[str], BaseException, BaseException]:
        cutter = await _cutter(seen)
        port = cutter.sockets[0].getsockname()[1]
        instance = Instance(id="a-cutter", name="orders", endpoints=(f"http://127.0.0.1:{port}",))
        try:
            async with (
                registered(registry_url, instance),
                serving(registry_url, "b-live"),
                AsyncClient(service="orders", registry=registry_url) as client,
            ):
                # Round-robin from a-cutter: exactly one of two POSTs reaches it.
                posts: list[str] = []
                post_error: BaseException | None = None
                for _ in range(2):
                    try:
                        posts.append((await client.post("/orders", content=b"{}")).text)
                    except httpx.RemoteProtocolError as exc:
                        post_error = exc
                gets = [(await client.get("/orders/1")).text for _ in range(4)]
                # Idempotent, but its body was streamed and cannot be sent again.
                with pytest.raises(disconnects) as put:
                    await client.put("/orders/1", content=streamed())
                assert post_error is not None
                return posts, gets, post_error, put.value
        finally:
            cutter.close()
            await cutter.wait_closed()

    posts, gets, post_error, put_error = run(scenario)
    assert posts == ["b-live"]
    assert gets == ["b-live"] * 4
    # The cutter got one POST (not sent again), every second GET (each retried), the PUT.
    assert seen == ["POST", "GET", "GET", "PUT"]
    notes = " ".join(post_error.__notes__)
    assert "service 'orders'" in notes
    assert "'a-cutter'" in notes
    assert "(POST not retried after a disconnect)" in notes
    assert "(a streamed body not retried after a disconnect)" in " ".join(put_error.__notes__)


def test_client_ejects_an_instance_that_keeps_refusing_then_takes_it_back(
    registry_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quiesce.client")
    port = closed_port()
    flaky = Instance(id="a-flaky", name="orders", endpoints=(f"http://127.0.0.1:{port}",))
    eject = 1.0

    async def scenario() -> tuple[list[str], list[str]]:
        async with (
            registered(registry_url, flaky),
            serving(registry_url, "b-steady"),
            AsyncClient(
                service="orders", registry=registry_url, ejection_threshold=2, ejection_time=eject
            ) as client,
        ):
            for _ in range(10):  # the second refusal ejects it: round-robin, by request 3
                began = time.monotonic()
                assert (await client.get("/")).text == "b-steady"
                ended = time.monotonic()
                if ejections(caplog):
                    break
            assert len(ejections(caplog)) == 1, caplog.text
            # The flaky instance comes back on its port, but stays ejected for a while.
            async with serving(None, "a-flaky-back", port=port):
                during = []
                while time.monotonic() < began + eject - 0.2:
                    during.append((await client.get("/")).text)
                await asyncio.sleep(ended + eject + 0.05 - time.monotonic())
                after = [(await client.get("/")).text for _ in range(4)]
            return during, after

    during, after = run(scenario)
    assert len(during) >= 4
    assert set(during) == {"b-steady"}
    assert sorted(after) == ["a-flaky-back", "a-flaky-back", "b-steady", "b-steady"]
    assert "'a-flaky' (http://127.0.0.1:" in caplog.text
    assert "back in the rotation" in caplog.text


def test_client_never_ejects_the_last_instance(
    file_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quiesce.client")
    dead = Instance(id="only", name="orders", endpoints=(f"http://127.0.0.1:{closed_port()}",))

    async def scenario() -> list[BaseException]:
        errors: list[BaseException] = []
        async with (
            registered(file_url, dead),
            AsyncClient(service="orders", registry=file_url, ejection_threshold=1) as client,
        ):
            for _ in range(3):
                with pytest.raises(httpx.ConnectError) as info:
                    await client.get("/")
                errors.append(info.value)
        return errors

    errors = run(scenario)
    assert not any(isinstance(e, NoInstanceError) for e in errors)
    assert all("service 'orders'" in " ".join(e.__notes__) for e in errors)
    assert ejections(caplog) == []


def test_client_without_instances_fails_with_an_error_naming_the_service(
    registry_url: str,
) -> None:
    async def scenario() -> float:
        async with AsyncClient(
            service="orders", registry=registry_url, discovery_timeout=0.3
        ) as client:
            began = time.monotonic()
            with pytest.raises(NoInstanceError) as info:
                await client.get("/")
            took = time.monotonic() - began
            message = str(info.value)
            assert "service 'orders'" in message
            assert "discovery_timeout=0.3s" in message
            assert isinstance(info.value, httpx.ConnectError)
            return took

    took = run(scenario)
    assert 0.3 - 0.02 <= took < 0.3 + 1.0  # event loop timers may fire a few ms early


# -- endpoints -----------------------------------------------------------------------


def test_client_uses_only_http_endpoints_and_kratos_is_secure(
    file_url: str, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path / "tls")
    context = ssl.create_default_context(cafile=str(tls.ca))

    async def scenario() -> tuple[httpx.Response, list[str], bool]:
        async with serving(
            None, "tls", ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)
        ) as secure:
            port = secure.endpoint.rsplit(":", 1)[1]
            both = Instance(
                id="a-tls",
                name="orders",
                endpoints=(
                    f"grpc://127.0.0.1:{closed_port()}?isSecure=false",
                    f"http://127.0.0.1:{port}?isSecure=true",
                ),
            )
            grpc_only = Instance(
                id="b-grpc", name="orders", endpoints=("grpc://127.0.0.1:9000?isSecure=false",)
            )
            async with (
                registered(file_url, both),
                registered(file_url, grpc_only),
                AsyncClient(service="orders", registry=file_url, verify=context) as client,
            ):
                response = await client.get("/x")
                stream = response.extensions["network_stream"]
                over_tls = stream.get_extra_info("ssl_object") is not None
                return response, [i.id for i in client.instances], over_tls

    response, rotation, over_tls = run(scenario)
    assert (response.status_code, response.text) == (200, "tls")
    assert over_tls, "Kratos' isSecure=true means https"
    assert rotation == ["a-tls"]


def test_http_endpoint_reads_kratos_and_plain_forms() -> None:
    def first(*endpoints: str) -> tuple[str, str, int] | None:
        return http_endpoint(Instance(id="i", name="s", endpoints=endpoints))

    assert first("http://10.0.0.1:8000?isSecure=false") == ("http", "10.0.0.1", 8000)
    assert first("http://10.0.0.1:8443?isSecure=true") == ("https", "10.0.0.1", 8443)
    assert first("https://[::1]:8443") == ("https", "::1", 8443)
    assert first("http://h") == ("http", "h", 80)
    assert first("grpc://h:1", "tcp://h:2", "http://h:bad", "http://h:3") == ("http", "h", 3)
    assert first("grpc://h:1") is None


def test_client_absolute_urls_pass_through_and_base_url_is_a_path_prefix(file_url: str) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with (
            serving(None, "elsewhere") as elsewhere,
            serving(file_url, "svc"),
            AsyncClient(service="orders", registry=file_url, base_url="/api/v1/") as client,
        ):
            direct = await client.get(elsewhere.endpoint + "/direct")
            prefixed = await client.get("orders")
            return direct, prefixed

    direct, prefixed = run(scenario)
    assert (direct.text, direct.headers["x-path"]) == ("elsewhere", "/direct")
    assert "quiesce.instance" not in direct.extensions
    assert (prefixed.text, prefixed.headers["x-path"]) == ("svc", "/api/v1/orders")


def test_client_relative_redirect_and_cookies_belong_to_the_service_not_one_instance(
    file_url: str,
) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with (
            serving(file_url, "a"),
            serving(file_url, "b"),
            AsyncClient(service="orders", registry=file_url, follow_redirects=True) as client,
        ):
            redirected = await client.get("/moved")
            logged_in = await client.get("/login")
            after = await client.get("/who")
            return redirected, logged_in, after

    redirected, logged_in, after = run(scenario)
    # The redirect went back through discovery (round-robin: the other instance),
    # not straight to the instance that sent it.
    (hop,) = redirected.history
    assert hop.status_code == 307
    assert redirected.url == httpx.URL(f"http://{PLACEHOLDER_HOST}/moved-here")
    assert redirected.headers["x-path"] == "/moved-here"
    first = hop.extensions["quiesce.instance"].id
    assert redirected.extensions["quiesce.instance"].id != first
    # A cookie set by one instance is sent to the next, whichever answers.
    assert logged_in.extensions["quiesce.instance"].id != after.extensions["quiesce.instance"].id
    assert after.headers["x-cookie"] == f"from-{logged_in.text}"


def test_client_options_are_checked_up_front() -> None:
    with pytest.raises(ConfigError, match="path prefix"):
        AsyncClient(service="orders", registry="file:", base_url="http://orders:8000")
    with pytest.raises(ConfigError, match="retries"):
        AsyncClient(service="orders", registry="file:", retries=-1)
    with pytest.raises(ConfigError, match="unknown registry scheme"):
        AsyncClient(service="orders", registry="zookeeper://127.0.0.1")


def test_closed_port_helper_really_refuses() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port()), timeout=1).close()
