"""The in-flight calls of a ``grpc.aio`` server, followed so that a stop can name those it cuts.

Imported only by :mod:`quiesce.servers.grpc`: it imports ``grpc``, which
``import quiesce`` does not.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

__all__ = ["CallTracker", "handler_tables"]


class CallTracker:
    """The calls being handled, by method and peer, so that a stop can name those it cuts.

    grpc.aio has no accessor for its in-flight calls, and interceptors can only
    be given at construction; so each method handler in grpc's own tables is
    replaced, before the server starts, by one that enters and leaves this
    set. Sync handlers (run in grpc's thread pool) are left as they are.
    """

    def __init__(self) -> None:
        self.active: dict[int, str] = {}
        #: Called as each tracked call begins (the app's ``Lifecycle.arrived``), if set.
        self.on_arrival: Callable[[], None] | None = None
        self._ids = itertools.count()

    def wrap_handlers(self, server: grpc.aio.Server) -> bool:
        """Wrap every handler of ``server`` in place; False if grpc's tables were not found."""
        tables = handler_tables(server)
        if tables is None:
            return False
        generic, registered = tables
        generic[:] = [_TrackedGeneric(handler, self) for handler in generic]
        for method, handler in registered.items():
            registered[method] = self.wrap(method, handler)
        return True

    def wrap(self, method: str, handler: Any) -> Any:
        """``handler`` (a ``grpc.RpcMethodHandler``) whose async behaviour is tracked."""
        kind = "_".join(
            "stream" if streams else "unary"
            for streams in (handler.request_streaming, handler.response_streaming)
        )
        behaviour = self._tracked(method, getattr(handler, kind))
        if behaviour is None:
            return handler
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(behaviour, handler.request_deserializer, handler.response_serializer)

    def _tracked(self, method: str, behaviour: Any) -> Any:
        # The same kind of callable as the original: grpc picks how to run it by kind.
        if inspect.isasyncgenfunction(behaviour):

            async def replies(request: Any, context: Any) -> AsyncIterator[Any]:
                with self._call(method, context):
                    async with contextlib.aclosing(behaviour(request, context)) as inner:
                        async for reply in inner:
                            yield reply

            return replies
        if inspect.iscoroutinefunction(behaviour):

            async def call(request: Any, context: Any) -> Any:
                with self._call(method, context):
                    return await behaviour(request, context)

            return call
        return None

    @contextlib.contextmanager
    def _call(self, method: str, context: Any) -> Iterator[None]:
        key = next(self._ids)
        if self.on_arrival is not None:
            self.on_arrival()
        try:
            peer = context.peer()
        except Exception:  # a peer is a detail of the report, never a reason to fail a call
            peer = "an unknown peer"
        self.active[key] = f"call {method} from {peer}"
        try:
            yield
        finally:
            del self.active[key]


class _TrackedGeneric(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # not generic at runtime
    """A generic handler whose method handlers are tracked by :class:`CallTracker`."""

    def __init__(self, inner: Any, calls: CallTracker) -> None:
        self._inner = inner
        self._calls = calls

    def service(self, handler_call_details: Any) -> Any:
        """The inner handler's answer for this method, tracked."""
        handler = self._inner.service(handler_call_details)
        return None if handler is None else self._calls.wrap(handler_call_details.method, handler)


def handler_tables(server: grpc.aio.Server) -> tuple[list[Any], dict[str, Any]] | None:
    """The generic handler list and registered method table of ``server``, or None.

    ``grpc.aio.Server`` keeps them in its Cython core without an accessor; the
    garbage collector's view of that core holds exactly one list (handlers
    added with ``add_generic_rpc_handlers``) and one dict (``"/pkg.Service/Method"``
    to handler, from ``add_registered_method_handlers``, which generated code
    uses). Anything else means a grpc release moved them: None
    (``tests/servers/test_grpc.py`` pins that they are found).
    """
    core = getattr(server, "_server", None)
    refs = gc.get_referents(core) if core is not None else []
    lists = [ref for ref in refs if type(ref) is list]
    dicts = [ref for ref in refs if type(ref) is dict]
    if len(lists) != 1 or len(dicts) != 1:
        return None
    generic, registered = lists[0], dicts[0]
    if not all(callable(getattr(handler, "service", None)) for handler in generic):
        return None
    if not all(isinstance(m, str) and m.startswith("/") and m.count("/") == 2 for m in registered):
        return None
    return generic, registered
