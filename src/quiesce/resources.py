"""Resources: things entered before the servers start and closed after they stop, LIFO.

Each close is bounded by the resource's own ``close_timeout`` (15 s unless
given: seed 003's "resource release" layer) and by what is left of the stop
budget. A value that can say what its close had to cut (a pool's connections
still checked out) implements :class:`NamesLeaks`; each line it names is a
``cut`` of the ``resources`` step.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, cast, runtime_checkable

from quiesce import ordering
from quiesce.config import check_seconds
from quiesce.errors import StartError
from quiesce.hooks import callable_name
from quiesce.phases import Deadline, PhaseRecord

__all__ = ["CLOSE_TIMEOUT", "NamesLeaks", "Resource", "ResourceStack"]

T = TypeVar("T")

#: A resource's close timeout unless it has its own: seed 003's "resource release" layer.
CLOSE_TIMEOUT = 15.0


@runtime_checkable
class NamesLeaks(Protocol):
    """A resource value that can name what its close had to cut.

    After the close (finished, failed or cut by its timeout), the app calls
    :meth:`leaks`; each line is a ``cut`` of the ``resources`` step, after
    ``resource <name>: ``, and makes the stop incomplete (exit code 3).
    """

    def leaks(self) -> list[str]:
        """What the close had to cut, one line each; empty when it lost nothing."""
        ...


class Resource(Generic[T]):
    """A handle on a resource of an app; :attr:`value` is what entering it produced.

    ``factory`` is an async context manager, a sync one, an async generator
    function (``yield`` the value, clean up after), or a callable returning
    any of these (or an awaitable of one). ``close_timeout`` bounds the close
    (None: :data:`CLOSE_TIMEOUT`); what is left of the stop budget bounds it too.
    """

    def __init__(
        self,
        factory: Any,
        *,
        name: str | None,
        depends_on: Sequence[str],
        close_timeout: float | None = None,
    ) -> None:
        self.factory = factory
        self.name = name or _name_of(factory)
        self.depends_on = tuple(depends_on)
        #: The bound on this resource's close, in seconds.
        self.close_timeout = CLOSE_TIMEOUT if close_timeout is None else close_timeout
        self._cm: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._value: T | None = None
        self._open = False

    @property
    def value(self) -> T:
        """What entering the resource produced.

        Raises:
            RuntimeError: the resource is not open (before the start or after the stop).

        """
        if not self._open:
            raise RuntimeError(f"resource {self.name!r} is not open (only between start and stop)")
        return cast(T, self._value)

    @property
    def is_open(self) -> bool:
        """True between a successful enter and the exit."""
        return self._open

    async def enter(self) -> None:
        """Open the resource."""
        self._cm = await _as_async_cm(self.factory)
        self._value = await self._cm.__aenter__()
        self._open = True

    async def close(self) -> None:
        """Close the resource; the context manager sees no exception."""
        cm, self._cm = self._cm, None
        try:
            if cm is not None:
                await cm.__aexit__(None, None, None)
        finally:
            self._open = False

    def leaks(self) -> list[str]:
        """What the value says its close cut (see :class:`NamesLeaks`); empty if it cannot say.

        Raises:
            Exception: whatever the value's ``leaks()`` raised.

        """
        value = self._value
        if not isinstance(value, NamesLeaks):
            return []
        return [str(line) for line in value.leaks()]


class ResourceStack:
    """An app's resources: entered one at a time after what they depend on, closed LIFO."""

    def __init__(self) -> None:
        self.resources: list[Resource[Any]] = []

    def add(self, res: Resource[Any]) -> None:
        """Declare ``res``; it is entered after those declared before it (and its dependencies)."""
        self.resources.append(res)

    def check(self) -> None:
        """Check each resource's ``close_timeout``.

        Raises:
            ConfigError: ``resource '<name>': close_timeout=<value>: must be ...``.

        """
        for res in self.resources:
            check_seconds({f"resource {res.name!r}: close_timeout": res.close_timeout})

    def order(self) -> list[Resource[Any]]:
        """Dependencies first, then declaration order."""
        by_name = {r.name: r for r in self.resources}
        order = ordering.stable_order(ordering.graph_of(self.resources))
        return [by_name[n] for n in order]

    async def enter(self, rec: PhaseRecord, budget: float) -> None:
        """Enter every resource in :meth:`order`, all within ``budget`` seconds.

        Raises:
            StartError: a resource failed to open, or did not open within the
                budget; it names the resource.

        """
        deadline = Deadline(budget)
        for res in self.order():
            rec.waited_for.append(f"resource {res.name}")
            left = deadline.remaining()
            try:
                async with asyncio.timeout(left):
                    await res.enter()
            except TimeoutError as exc:
                raise StartError(f"resource {res.name!r}", f"not open within {left:.3g}s") from exc
            except Exception as exc:
                raise StartError(f"resource {res.name!r}", exc) from exc

    async def close(self, rec: PhaseRecord, budget: float, *, at_once: bool = False) -> None:
        """Close the open resources, last in first out, all within ``budget`` seconds.

        Each close is bounded by the resource's ``close_timeout`` and by what
        is left of ``budget``. Each error, each resource whose close was cut,
        and each leak its value names (:class:`NamesLeaks`) is kept in ``rec``;
        the resources after it still close (with no time left, each still gets
        its close called). ``at_once`` (a forced end) names each as cut instead
        of waited for.
        """
        deadline = Deadline(budget)
        for res in reversed(self.order()):
            if not res.is_open:
                continue
            if at_once:
                rec.cut.append(f"resource {res.name} [closed at once]")
            else:
                rec.waited_for.append(f"resource {res.name}")
            left = min(res.close_timeout, deadline.remaining())
            try:
                # A close that cannot finish in time is still begun: asyncio.timeout(0)
                # lets it run up to its first real wait, where most closes are done.
                async with asyncio.timeout(left):
                    await res.close()
            except TimeoutError:
                rec.timed_out(f"resource {res.name} (close cut at {left:.3g}s)")
            except Exception as exc:
                rec.error(f"resource {res.name}", exc)
            try:
                for leak in res.leaks():
                    rec.timed_out(f"resource {res.name}: {leak}")
            except Exception as exc:
                rec.error(f"resource {res.name}: leaks()", exc)


def _name_of(factory: Any) -> str:
    if callable(factory):
        return callable_name(factory).rsplit(".", 1)[-1]
    # An instance may name itself (postgres_pool(...) is "postgres"), else its type does.
    own = getattr(factory, "__name__", None)
    return own if isinstance(own, str) else type(factory).__name__


async def _as_async_cm(factory: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    if inspect.isasyncgenfunction(factory):
        return contextlib.asynccontextmanager(factory)()
    made = factory
    if callable(factory) and not _is_cm(factory):
        made = factory()
        if inspect.isawaitable(made):
            made = await made
    if hasattr(made, "__aenter__"):
        return cast(contextlib.AbstractAsyncContextManager[Any], made)
    if hasattr(made, "__enter__"):
        return _SyncAdapter(made)
    raise TypeError(
        f"resource factory {factory!r} gave {type(made).__name__}, not a context manager"
    )


def _is_cm(obj: Any) -> bool:
    return hasattr(obj, "__aenter__") or hasattr(obj, "__enter__")


class _SyncAdapter(contextlib.AbstractAsyncContextManager[Any]):
    def __init__(self, cm: Any) -> None:
        self._cm = cm

    async def __aenter__(self) -> Any:
        return self._cm.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return cast(bool | None, self._cm.__exit__(et, ev, tb))
