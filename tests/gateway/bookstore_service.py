"""The Bookstore servicer the gateway's tests call, and the scenario services built on it.

Imported by the in-process tests (:class:`Bookstore`, :func:`bookstore_server`), and run as a
real subprocess: ``python -m tests.gateway.bookstore_service CASE REPORT_FILE [ARGS]``.

Each prints ``EVENT ready <url> <instance id> <time>`` once ready.

- ``seed``: one App, ``GatewayServer("grpc")`` in front of a ``GRPCServer``, drain delay 1 s;
  the url is the gateway's. Prints ``EVENT <server>-stop-begin/-end <time>`` as each
  server's stop begins and ends.
- ``instance REGISTRY_URL``: a ``bookstore`` instance (a GRPCServer on a free port, with
  reflection) registered there, drain delay 0.3 s; the url is its ``grpc://`` endpoint.

``GetBook`` is the call the tests shape: book 404 fails NOT_FOUND, book 503 UNAVAILABLE, a
book of 1000 or more sleeps ``book - 1000`` ms first (1300: 300 ms); the reply's ``labels``
are the call's metadata, its ``author.name`` the instance's name.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf import empty_pb2

from gateway.proto import bookstore_pb2 as pb
from gateway.proto import bookstore_pb2_grpc as pb_grpc
from quiesce import App, GRPCServer
from quiesce.gateway.server import GatewayServer
from quiesce.observe import Observer
from scenarios.events import event

#: Where a GetBook of this book or above sleeps ``book - SLEEPY`` ms.
SLEEPY = 1000
#: Metadata keys the test sees again in the reply's labels (gRPC's own ones left out).
SKIPPED_METADATA = ("user-agent", "grpc-accept-encoding", "grpc-timeout")

Context = grpc.aio.ServicerContext[Any, Any]


class Bookstore(pb_grpc.BookstoreServicer):
    """A small bookstore that says what it received and what happened to its calls."""

    def __init__(self, name: str = "bookstore") -> None:
        self.name = name
        #: Set when a call is cancelled while it runs (the client went away, the deadline).
        self.cancelled = asyncio.Event()
        #: Set when a sleepy call begins.
        self.sleeping = asyncio.Event()

    async def GetBook(self, request: pb.GetBookRequest, context: Context) -> pb.Book:
        if request.book == 404:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no book {request.book}")
        if request.book == 503:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the shelf is being moved")
        if request.book >= SLEEPY:
            self.sleeping.set()
            try:
                await asyncio.sleep((request.book - SLEEPY) / 1000)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        labels = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str) and key not in SKIPPED_METADATA
        }
        return pb.Book(
            name=f"shelves/{request.shelf}/books/{request.book}",
            title=f"book {request.book}",
            author=pb.Author(name=self.name),
            labels=labels,
        )

    async def ListBooks(
        self, request: pb.ListBooksRequest, context: Context
    ) -> pb.ListBooksResponse:
        books = [
            pb.Book(
                name=f"shelves/{request.shelf}/books/{i}", tags=request.tags, genre=request.genre
            )
            for i in range(request.page_size)
        ]
        return pb.ListBooksResponse(books=books, next_page_token=request.author.name)

    async def CreateBook(self, request: pb.CreateBookRequest, context: Context) -> pb.Book:
        book = pb.Book()
        book.CopyFrom(request.book)
        book.name = f"shelves/{request.shelf}/books/{request.request_id}"
        return book

    async def DeleteBook(self, request: pb.DeleteBookRequest, context: Context) -> empty_pb2.Empty:
        return empty_pb2.Empty()

    async def Restock(self, request: pb.RestockRequest, context: Context) -> pb.RestockReply:
        await asyncio.sleep(request.count / 1000)  # count ms, for the per-route timeout
        return pb.RestockReply(in_stock=request.count)


def bookstore_server(servicer: Bookstore, *, reflection: bool = False) -> grpc.aio.Server:
    """A ``grpc.aio.Server`` serving ``servicer`` (and reflection, with ``reflection``)."""
    server = grpc.aio.server()
    pb_grpc.add_BookstoreServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # generated
    if reflection:
        from grpc_reflection.v1alpha import reflection as grpc_reflection

        names = (
            pb.DESCRIPTOR.services_by_name["Bookstore"].full_name,
            grpc_reflection.SERVICE_NAME,
        )
        grpc_reflection.enable_server_reflection(names, server)
    return server


class StopEvents(Observer):
    """Says when each server's stop begins and ends: ``EVENT <server>-stop-begin <time>``."""

    def server_stop_began(self, server: str, in_flight: int | None) -> None:
        event(f"{server}-stop-begin")

    def server_stop_ended(self, server: str, in_flight: int | None, cut: Sequence[str]) -> None:
        event(f"{server}-stop-end")


@asynccontextmanager
async def running(app: App, timeout: float = 10.0) -> AsyncIterator[App]:
    """Serve ``app`` in this loop until the block ends, then stop it; fail if it never gets ready.

    The report is ``app.report`` afterwards.
    """
    serving = asyncio.create_task(app.serve())
    ready = asyncio.ensure_future(app.ready.wait())
    try:
        await asyncio.wait({serving, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            message = serving.result().to_text() if serving.done() else "no ready within timeout"
            raise AssertionError(f"the app did not get ready: {message}")
        yield app
    finally:
        ready.cancel()
        app.stop("test")
        await asyncio.wait_for(serving, timeout)


def seed(app: App) -> str:
    app.drain_delay = 1.0
    app.lifecycle.observers.add(StopEvents())
    app.add_server(GRPCServer(lambda: bookstore_server(Bookstore()), port=0))
    app.add_server(GatewayServer("grpc", port=0, access_log=False))
    return "gateway"


def instance(app: App) -> str:
    app.drain_delay = 0.3
    app.registry = sys.argv[3]
    servicer = Bookstore(app.id)
    app.add_server(GRPCServer(lambda: bookstore_server(servicer, reflection=True), port=0))
    return "grpc"


CASES: dict[str, Callable[[App], str]] = {f.__name__: f for f in (seed, instance)}


def main() -> None:
    case, report_file = sys.argv[1], sys.argv[2]
    app = App(name="bookstore", stop_timeout=10.0, report_file=report_file)
    shown = CASES[case](app)

    @app.after_start
    def ready() -> None:
        server = next(s for s in app.servers if s.name == shown)
        event(f"ready {server.endpoints()[0]} {app.id}")

    app.run()


if __name__ == "__main__":
    main()
