"""The drain: keep serving after deregistration while clients and balancers move away.

A fixed delay (``drain_delay=5``) always waits its whole length. A
:class:`Drain` waits at least ``min`` (the time clients need to notice the
deregistration), then ends as soon as no request, call, connection or message
has arrived for ``idle`` seconds on any server (after ``min``), and never
later than ``max``: waiting on while no traffic arrives only delays the deploy.
Arrivals come from the servers, through :meth:`quiesce.lifecycle.Lifecycle.arrived`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from quiesce.config import check_seconds
from quiesce.errors import ConfigError
from quiesce.lifecycle import Lifecycle

__all__ = ["Drain", "check_drain", "hold", "parse_drain"]


@dataclass(frozen=True)
class Drain:
    """An adaptive drain delay, for ``App(drain_delay=Drain(...))``.

    Args:
        min: seconds always waited, from the deregistration.
        max: seconds never exceeded, from the deregistration.
        idle: after ``min``, end once nothing has arrived for this long.

    """

    min: float = 1.0
    max: float = 10.0
    idle: float = 0.5


def parse_drain(text: str) -> float | Drain:
    """A drain delay written as text: seconds (``"1.5"``) or ``"min=0.5,max=5,idle=0.3"``.

    A :class:`Drain`'s fields left out keep their defaults; the values are
    checked by :func:`check_drain`, not here.

    Raises:
        ConfigError: ``drain_delay=<text>: <why>``.

    """
    try:
        if "=" not in text:
            return float(text)
        fields = dict(part.split("=", 1) for part in text.split(","))
        return Drain(**{key.strip(): float(value) for key, value in fields.items()})
    except (TypeError, ValueError):
        must = "seconds, or min=S,max=S,idle=S (each optional)"
        raise ConfigError(f"drain_delay={text!r}: must be {must}") from None


def check_drain(delay: object) -> float:
    """Check a ``drain_delay`` (seconds, or a :class:`Drain`); returns the longest it can last.

    Raises:
        ConfigError: ``drain_delay=<value>: <why>``.

    """
    if not isinstance(delay, Drain):
        check_seconds({"drain_delay": delay}, zero_ok=True)
        assert isinstance(delay, int | float)
        return delay
    check_seconds({"drain_delay.min": delay.min}, zero_ok=True)
    check_seconds({"drain_delay.max": delay.max, "drain_delay.idle": delay.idle})
    if delay.min > delay.max:
        raise ConfigError(f"drain_delay={delay!r}: min must not exceed max")
    return delay.max


async def hold(delay: float | Drain, lifecycle: Lifecycle) -> str:
    """Keep serving for the drain; returns how it ended: ``fixed``, ``idle after 1.62s``, ``max``.

    Bounded by ``delay`` (a number, or a :class:`Drain`'s ``max``); it wakes at
    most once per ``idle`` seconds of traffic, never polls.
    """
    if not isinstance(delay, Drain):
        await asyncio.sleep(delay)
        return "fixed"
    began = time.monotonic()
    await asyncio.sleep(delay.min)
    quiet_after = began + delay.min  # arrivals before the end of min do not count
    end = began + delay.max
    while True:
        now = time.monotonic()
        quiet_since = max(quiet_after, lifecycle.last_arrival)
        if now - quiet_since >= delay.idle:
            return f"idle after {now - began:.2f}s"
        if now >= end:
            return "max"
        await asyncio.sleep(min(quiet_since + delay.idle, end) - now)
