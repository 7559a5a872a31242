"""What a :class:`~quiesce.consumers.Consumer`'s options must be: checked before it starts."""

from __future__ import annotations

import inspect
from typing import Any

from quiesce import config
from quiesce.errors import ConfigError

__all__ = ["MAX_CONCURRENCY", "check_consumer"]

#: A concurrency past this is a typo, not a plan.
MAX_CONCURRENCY = 10_000


def check_consumer(consumer: Any) -> None:
    """Check ``consumer``'s options (a :class:`~quiesce.consumers.Consumer`).

    Raises:
        ConfigError: a handler that is not an ``async def``, a concurrency or
            ``max_deliveries`` that is not a positive whole number, a bad timeout.

    """
    where = f"consumer {consumer.name!r}"
    if not _is_async_callable(consumer.handle):
        raise ConfigError(f"{where}: handle={consumer.handle!r} must be an async function")
    counts: tuple[tuple[str, object, int], ...] = (
        ("concurrency", consumer.concurrency, MAX_CONCURRENCY),
        ("max_deliveries", consumer.max_deliveries, 1_000_000),
    )
    for option, value, top in counts:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ConfigError(f"{where}: {option}={value!r} must be a whole number 1..{top}")
    dead_letter: object = consumer.dead_letter
    if dead_letter is not None and (not isinstance(dead_letter, str) or not dead_letter):
        raise ConfigError(f"{where}: dead_letter={dead_letter!r} must be a name or None")
    durations = {
        "connect_timeout": consumer.connect_timeout,
        "call_timeout": consumer.call_timeout,
        "reconnect_max": consumer.reconnect_max,
    }
    try:
        config.check_seconds(durations)
        if consumer.stop_timeout is not None:
            config.check_seconds({"stop_timeout": consumer.stop_timeout}, zero_ok=True)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _is_async_callable(fn: object) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 (an instance with an async __call__)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
