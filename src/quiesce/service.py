"""What a service is made of: its servers, resources, hooks and tracked work, as declared.

:class:`~quiesce.App` is a :class:`Service` that also runs: this module holds
the declaring half of its public API (``add_server``, ``resource``, the four
hook decorators, ``spawn``, ``guard``, ``every``), :mod:`quiesce.app` the
options and the start and stop sequences that use what was declared.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Protocol, TypeVar, cast, overload

from quiesce import config
from quiesce.hooks import Hook, Hooks
from quiesce.lifecycle import Lifecycle
from quiesce.phases import State
from quiesce.resources import Resource, ResourceStack
from quiesce.servers.contract import Server
from quiesce.tasks import Guard, PeriodicJob, TaskTracker

__all__ = ["Service"]

T = TypeVar("T")
H = TypeVar("H", bound=Hook)


class Decorator(Protocol):
    """What ``@app.after_stop(timeout=...)`` returns: it adds the hook and returns it."""

    def __call__(self, fn: H, /) -> H:
        """Add ``fn`` as a hook; returns it."""
        ...


class Service:
    """The parts of one service, declared before it runs (see :class:`~quiesce.App`)."""

    def __init__(self, servers: Iterable[Server], lifecycle: Lifecycle) -> None:
        # A value that is not a collection is kept as given: the validation names it (exit 2)
        # instead of a TypeError here.
        self.servers: list[Server] = listed(servers)
        #: What the servers see of this run: readiness, ``ready``, ``stopping``, arrivals.
        self.lifecycle = lifecycle
        self._hooks = Hooks()
        self._resources = ResourceStack()
        self._tracker = TaskTracker()
        self._jobs: list[PeriodicJob] = []

    @property
    def state(self) -> State:
        """Where the app is in its life; only moves forward."""
        return self.lifecycle.state

    def add_server(self, server: Server) -> Server:
        """Add a server before the start; returns it."""
        self._check_not_started("add_server")
        self.servers.append(server)
        return server

    @overload
    def resource(
        self,
        factory: AbstractAsyncContextManager[T],
        *,
        name: str | None = None,
        depends_on: Sequence[str] = (),
        close_timeout: float | None = None,
    ) -> Resource[T]: ...
    @overload
    def resource(
        self,
        factory: AbstractContextManager[T],
        *,
        name: str | None = None,
        depends_on: Sequence[str] = (),
        close_timeout: float | None = None,
    ) -> Resource[T]: ...
    @overload
    def resource(
        self,
        factory: Callable[[], AsyncIterator[T]],
        *,
        name: str | None = None,
        depends_on: Sequence[str] = (),
        close_timeout: float | None = None,
    ) -> Resource[T]: ...
    @overload
    def resource(
        self,
        factory: Callable[[], AbstractAsyncContextManager[T]]
        | Callable[[], Awaitable[AbstractAsyncContextManager[T]]],
        *,
        name: str | None = None,
        depends_on: Sequence[str] = (),
        close_timeout: float | None = None,
    ) -> Resource[T]: ...
    @overload
    def resource(
        self,
        factory: Callable[[], AbstractContextManager[T]]
        | Callable[[], Awaitable[AbstractContextManager[T]]],
        *,
        name: str | None = None,
        depends_on: Sequence[str] = (),
        close_timeout: float | None = None,
    ) -> Resource[T]: ...
    def resource(
        self,
        factory: Any,
        *,
        name: str | None = None,
        depends_on: Sequence[str] = (),
        close_timeout: float | None = None,
    ) -> Resource[Any]:
        """Declare a resource entered at start, before the servers, and closed last (LIFO).

        ``factory`` is an async (or sync) context manager, an async generator
        function, or a callable returning a context manager (or an awaitable of
        one). Resources are entered in declaration order, after those they
        ``depends_on``, and closed in reverse after the servers and the
        ``after_stop`` hooks, each within ``close_timeout`` seconds (None:
        :data:`~quiesce.resources.CLOSE_TIMEOUT`, 15 s) and what is left of
        the stop budget. Returns a handle whose ``.value`` is what entering
        produced, typed as the context manager's value. A bad ``close_timeout``
        is a :class:`~quiesce.ConfigError` of the run (exit code 2).

        Raises:
            RuntimeError: the app has already started.

        """
        self._check_not_started("resource")
        res: Resource[Any] = Resource(
            factory, name=name, depends_on=depends_on, close_timeout=close_timeout
        )
        self._resources.add(res)
        return res

    # Each hook decorator is used bare (``@app.after_stop``) or with the hook's own
    # timeout (``@app.after_stop(timeout=60)``); without one, the app's hook_timeout.

    @overload
    def before_start(self, fn: H, /, *, timeout: float | None = None) -> H: ...
    @overload
    def before_start(self, fn: None = None, /, *, timeout: float | None = None) -> Decorator: ...
    def before_start(self, fn: H | None = None, /, *, timeout: float | None = None) -> Any:
        """Decorator: run ``fn`` after resources, before servers start; failing fails the start."""
        return self._add_hook("before_start", fn, timeout)

    @overload
    def after_start(self, fn: H, /, *, timeout: float | None = None) -> H: ...
    @overload
    def after_start(self, fn: None = None, /, *, timeout: float | None = None) -> Decorator: ...
    def after_start(self, fn: H | None = None, /, *, timeout: float | None = None) -> Any:
        """Decorator: run ``fn`` once every server is ready (and registered)."""
        return self._add_hook("after_start", fn, timeout)

    @overload
    def before_stop(self, fn: H, /, *, timeout: float | None = None) -> H: ...
    @overload
    def before_stop(self, fn: None = None, /, *, timeout: float | None = None) -> Decorator: ...
    def before_stop(self, fn: H | None = None, /, *, timeout: float | None = None) -> Any:
        """Decorator: run ``fn`` as the stop begins, before deregistration (go-zero's wrap-up)."""
        return self._add_hook("before_stop", fn, timeout)

    @overload
    def after_stop(self, fn: H, /, *, timeout: float | None = None) -> H: ...
    @overload
    def after_stop(self, fn: None = None, /, *, timeout: float | None = None) -> Decorator: ...
    def after_stop(self, fn: H | None = None, /, *, timeout: float | None = None) -> Any:
        """Decorator: run ``fn`` after servers and tasks stopped, before resources close."""
        return self._add_hook("after_stop", fn, timeout)

    def _add_hook(self, group: str, fn: H | None, timeout: float | None) -> Any:
        """Add ``fn`` (or return the decorator that will) to ``group`` with its own ``timeout``.

        Raises:
            ConfigError: ``fn`` is not callable; or, once the app runs, a bad
                ``timeout`` (declared before the run, the run fails with it: exit code 2).

        """

        def add(fn: H) -> H:
            self._hooks.add(group, fn, timeout, now=self.state is not State.CREATED)
            return fn

        return add if fn is None else add(fn)

    # -- tracked work ----------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a background task that the stop waits for (the ``tasks`` phase).

        Call it from the app's event loop. At the deadline the task is
        cancelled and the report names it with its stack and spawn site.

        Raises:
            StoppedError: the ``tasks`` phase of the stop has ended.

        """
        caller = sys._getframe(1)  # the spawn site the report names: the user's line
        return self._tracker.spawn(coro, name, (caller.f_code, caller.f_lineno))

    def guard(self, name: str | None = None) -> Guard:
        """A critical section the stop waits for: ``async with app.guard():`` (``with`` in threads).

        Raises:
            StoppedError: on entry, once the ``tasks`` phase of the stop has ended.

        """
        if name is None:
            caller = sys._getframe(1)
            name = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        return self._tracker.guard(name)

    def every(
        self, seconds: float, fn: Callable[[], Any], *, name: str | None = None
    ) -> PeriodicJob:
        """Run ``fn`` (sync or async) every ``seconds`` once the app is ready.

        At the stop a running iteration finishes (bounded by the stop budget)
        and no new one starts.

        Raises:
            ConfigError: ``seconds`` is not a positive number of seconds (at most a
                day). Declared before the run, the run fails with it (exit code 2);
                once the app runs, this call raises it.

        """
        if self.state is not State.CREATED:
            config.check_period(seconds, fn)
        caller = sys._getframe(1)  # where the job was declared, for its failures
        job = self._tracker.every(seconds, fn, name, (caller.f_code, caller.f_lineno))
        self._jobs.append(job)
        return job

    def _check_not_started(self, what: str) -> None:
        if self.state is not State.CREATED:
            raise RuntimeError(f"{what}(): the app has already started (state {self.state.value})")


def listed(items: Iterable[T]) -> list[T]:
    """``items`` as a list, or as given when it is not a collection (validation names it)."""
    given: object = items
    if isinstance(given, Iterable) and not isinstance(given, str | bytes):
        return list(items)
    return cast(list[T], given)
