"""What a server sees of the app it serves in: a :class:`Lifecycle`, never the App itself.

The App owns one and hands it to each server once (``attach``), before the
start. A server reads readiness from it, waits on ``ready`` or ``stopping``,
and says when traffic arrives (:meth:`Lifecycle.arrived`), which is what an
adaptive drain (:class:`quiesce.Drain`) watches.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from quiesce.observe import Observers
from quiesce.phases import State

__all__ = ["Lifecycle", "LifecycleEvent"]


class LifecycleEvent(asyncio.Event):
    """An :class:`asyncio.Event` that can also be awaited directly: ``await app.stopping``."""

    def __await__(self) -> Any:
        return self.wait().__await__()


class Lifecycle:
    """The lifecycle of one app run, as its servers see it.

    ``ready`` is set once every server is ready (and the instance registered);
    ``stopping`` when the stop begins. ``state`` is the app's
    :class:`~quiesce.State`; only the app moves it.
    """

    __slots__ = (
        "accounts",
        "app",
        "arrivals",
        "dump_tasks",
        "find_server",
        "in_flight",
        "last_arrival",
        "observers",
        "readiness",
        "ready",
        "registered",
        "registry",
        "state",
        "stopping",
        "tracked_tasks",
    )

    def __init__(self, app: str = "") -> None:
        #: The app's name, for messages ("in use by App 'orders'").
        self.app = app
        self.ready = LifecycleEvent()
        self.stopping = LifecycleEvent()
        self.state = State.CREATED
        #: How many requests, calls, connections or messages have arrived.
        self.arrivals = 0
        #: ``time.monotonic()`` of the last arrival; -inf before the first.
        self.last_arrival = -math.inf
        #: Whether the instance is in the registry now (registered and not yet withdrawn).
        self.registered = False
        #: What watches the run (metrics, traces); add yours with ``observers.add()``.
        self.observers = Observers()
        #: Requests, calls or messages in flight now, by server (those that can tell).
        self.in_flight: Callable[[], dict[str, int]] = dict
        #: Whether each server that can tell (a consumer) is ready now, by server.
        self.readiness: Callable[[], dict[str, bool]] = dict
        #: What each accounting server (a consumer) did with its messages so far, by server.
        self.accounts: Callable[[], dict[str, dict[str, int | list[str]]]] = dict
        #: How many tracked tasks and guards are running now.
        self.tracked_tasks: Callable[[], int] = lambda: 0
        #: Every task of the loop with its await chain (what SIGUSR1 prints).
        self.dump_tasks: Callable[[], str] = str
        #: Another server of the same app by name (a gateway finds its upstream), or None.
        self.find_server: Callable[[str], object | None] = lambda name: None
        #: The app's registry (a :class:`~quiesce.Registry`, usually a Discovery too), or None.
        self.registry: object | None = None

    @property
    def is_serving(self) -> bool:
        """Readiness: true between ready and the start of the stop."""
        return self.state is State.RUNNING

    def not_ready(self) -> list[str]:
        """The servers that say they are not ready now (a consumer without its broker)."""
        return [name for name, ready in self.readiness().items() if not ready]

    @property
    def is_live(self) -> bool:
        """True from the start of the start to the end of the stop."""
        return self.state in (State.STARTING, State.RUNNING, State.STOPPING)

    def arrived(self) -> None:
        """Say that a request, call, connection or message arrived (on the request path: cheap).

        Health and readiness probes are not traffic: servers do not report them.
        """
        self.arrivals += 1
        self.last_arrival = time.monotonic()
