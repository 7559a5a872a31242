"""What :class:`~quiesce.HTTPServer` puts in place of, or around, uvicorn's own pieces.

The rules its uvicorn options must meet (checked before anything binds), how a
cut connection is named, the connection set that says when it empties, and the
lifespan logger that keeps uvicorn's startup errors to one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, MutableSet
from typing import Any

from uvicorn.config import HTTP_PROTOCOLS, LIFESPAN, LOG_LEVELS, WS_PROTOCOLS
from uvicorn.importer import ImportFromStringError, import_from_string

from quiesce.errors import ConfigError

__all__ = [
    "NOT_EMBEDDABLE",
    "OPTION_RULES",
    "ConnectionSet",
    "LifespanLog",
    "cancel_lifespan",
    "check_uvicorn_options",
    "describe",
    "unsent_bytes",
]

logger = logging.getLogger("quiesce.http")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _seconds(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < math.inf


def _protocol(choices: dict[str, Any]) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if isinstance(v, str) and ":" in v:  # "module:Class", as uvicorn takes it
            with contextlib.suppress(ImportFromStringError):
                v = import_from_string(v)
        if isinstance(v, type):
            return issubclass(v, asyncio.Protocol)
        return isinstance(v, str) and v in choices

    return ok


_PROTOCOL = ", a 'module:Class' string or an asyncio.Protocol class"
#: What documented uvicorn options must be: uvicorn fails on them only at start, or serves
#: wrongly (a string access_log is true). Options not named here are left to uvicorn.Config.
OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **dict.fromkeys(("backlog", "ws_max_size", "ws_max_queue"), (_count, "a positive integer")),
    **dict.fromkeys(
        ("limit_concurrency", "limit_max_requests", "h11_max_incomplete_event_size"),
        (lambda v: v is None or _count(v), "a positive integer or None"),
    ),
    "limit_max_requests_jitter": (lambda v: v == 0 or _count(v), "an integer, 0 or more"),
    "timeout_keep_alive": (_seconds, "a number of seconds"),
    **dict.fromkeys(
        ("ws_ping_interval", "ws_ping_timeout"),
        (lambda v: v is None or _seconds(v), "a number of seconds or None"),
    ),
    **dict.fromkeys(
        ("access_log", "proxy_headers", "server_header", "date_header", "http2"),
        (lambda v: isinstance(v, bool), "True or False"),
    ),
    "ws_per_message_deflate": (lambda v: isinstance(v, bool), "True or False"),
    "use_colors": (lambda v: v is None or isinstance(v, bool), "True, False or None"),
    "log_level": (
        lambda v: v is None or type(v) is int or str(v).lower() in LOG_LEVELS,
        f"one of {', '.join(LOG_LEVELS)}, a number or None",
    ),
    "lifespan": (
        lambda v: isinstance(v, str) and v in LIFESPAN,
        f"one of {', '.join(map(repr, LIFESPAN))}",
    ),
    "http": (
        _protocol(HTTP_PROTOCOLS),
        f"one of {', '.join(map(repr, HTTP_PROTOCOLS))}{_PROTOCOL}",
    ),
    "ws": (_protocol(WS_PROTOCOLS), f"one of {', '.join(map(repr, WS_PROTOCOLS))}{_PROTOCOL}"),
}


#: uvicorn options that make no sense for one embedded server, and what to do instead.
NOT_EMBEDDABLE = {
    "uds": "HTTPServer listens on host:port",
    "fd": "HTTPServer listens on host:port",
    "reload": "restart the process instead",
    "workers": "run more instances instead",
    "timeout_graceful_shutdown": "use stop_timeout",
    "loop": "the App runs on its own loop (uvloop when installed)",
    "interface": "HTTPServer serves ASGI 3 apps",
    "factory": "pass the app itself",
}
#: Values of :data:`NOT_EMBEDDABLE` options that change nothing, beyond None and False.
HARMLESS = {"workers": (1,), "loop": ("auto", "none"), "interface": ("auto", "asgi3")}


def check_uvicorn_options(where: str, options: Mapping[str, Any]) -> None:
    """Check uvicorn options by :data:`NOT_EMBEDDABLE` and :data:`OPTION_RULES`.

    Raises:
        ConfigError: ``<where>: uvicorn option <name>=<value>: <why>``.

    """
    for option, instead in NOT_EMBEDDABLE.items():
        value = options.get(option)
        if value not in (None, False, *HARMLESS.get(option, ())):
            raise ConfigError(f"{where}: uvicorn option {option}={value!r}: {instead}")
    for option, value in options.items():
        # uvicorn would fail on these only at start (exit 1), or misbehave while serving.
        ok, must = OPTION_RULES.get(option, (lambda v: True, ""))
        if not ok(value):
            raise ConfigError(f"{where}: uvicorn option {option}={value!r}: must be {must}")


def describe(scope: MutableMapping[str, Any], unsent: int = 0) -> str:
    """How the report names a cut request, response or WebSocket."""
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "?"
    what = f"{scope.get('method', '?')} {scope.get('path', '?')}"
    if scope.get("type") == "websocket":
        return f"websocket {scope.get('path', '?')} from {where} [closed 1001]"
    if unsent:
        return f"response {what} to {where} [cut: {unsent} bytes unsent]"
    return f"request {what} from {where} [cut]"


def cancel_lifespan(lifespan: object) -> None:
    """Cancel the task running ``lifespan``'s app, if it still runs (uvicorn keeps no handle).

    A startup the start's budget cut leaves uvicorn's ``LifespanOn.main()``
    task waiting on the app; without this it would run on after the start failed.
    """
    main = getattr(type(lifespan), "main", None)
    code = getattr(main, "__code__", None)
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is not None and frame.f_code is code and frame.f_locals.get("self") is lifespan:
            task.cancel()


def unsent_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes still in ``transport``'s buffer: what aborting it loses.

    What the kernel already holds is not counted: closing the socket lets the
    kernel deliver it (measured: a client read all of it after the abort).
    """
    return int(getattr(transport, "get_write_buffer_size", lambda: 0)())


class ConnectionSet(MutableSet[Any]):
    """uvicorn's connection set, able to say when it becomes empty (no polling).

    Not a ``set`` subclass: one of those wakes the stop only from the methods it
    overrides (uvicorn's WebSocket protocols leave with ``remove()``, which a
    subclass of ``set`` overriding ``discard()`` never saw). Here the items live
    in a private dict (with when each was accepted) that only :meth:`add` and
    :meth:`discard` touch, and every
    other way out (remove, pop, clear, -=, &=, ^=, the ``*_update`` methods)
    goes through :meth:`discard`, so the event cannot miss.
    """

    def __init__(self, on_add: Callable[[], None] | None = None) -> None:
        self._items: dict[Any, float] = {}  # each connection, with when it was accepted
        self._empty = asyncio.Event()
        self._empty.set()
        self._on_add = on_add  # a new connection is an arrival (Lifecycle.arrived)

    @classmethod
    def _from_iterable(cls, items: Iterable[Any]) -> set[Any]:
        return set(items)  # what a - b and the other operators make: a plain set

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Any) -> None:
        """Add a connection (uvicorn calls this in ``connection_made``)."""
        self._items[item] = time.monotonic()
        self._empty.clear()
        if self._on_add is not None:
            self._on_add()

    def discard(self, item: Any) -> None:
        """Remove a connection if present; every other way out comes through here."""
        self._items.pop(item, None)
        if not self._items:
            self._empty.set()

    def difference_update(self, *others: Iterable[Any]) -> None:
        """Remove every connection in ``others`` (as :meth:`set.difference_update`)."""
        for other in others:
            self -= set(other)

    def intersection_update(self, *others: Iterable[Any]) -> None:
        """Keep only connections in every one of ``others``."""
        for other in others:
            self &= set(other)

    def symmetric_difference_update(self, other: Iterable[Any]) -> None:
        """Remove those in ``other``, add those only there (as :class:`set` does)."""
        self ^= set(other)

    def age(self, item: Any) -> float:
        """Seconds since ``item`` was accepted (0 for one not here)."""
        added = self._items.get(item)
        return 0.0 if added is None else time.monotonic() - added

    async def wait_empty(self) -> None:
        """Return once no connection is left (at once when none is)."""
        await self._empty.wait()


class LifespanLog:
    """Stands in for uvicorn's lifespan logger: errors kept for one line, details at DEBUG.

    Tracebacks are not logged here: uvicorn has them only as text (or logs the
    exception as well), and start() logs the exception itself once.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Progress messages go to DEBUG."""
        logger.debug(msg, *args, **kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Keep the error's last line for the start error; no traceback here."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, BaseException):
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        text = (str(msg) % args if args else str(msg)).strip()
        said = text.startswith(("Application startup failed", "Application shutdown failed"))
        if text and not said and not text.startswith("Traceback"):
            logger.debug("%s", text)
        if text and not said:
            # Starlette sends the whole traceback as the message: its last line says what.
            self.errors.append(text.splitlines()[-1])
