"""PostgreSQL (asyncpg) as a resource: a pool that knows who holds each connection.

Install with ``pip install 'quiesce[postgres]'``. Declared with::

    db = app.resource(postgres_pool(dsn, min_size=1, max_size=16), name="db", close_timeout=15)

the pool opens before the servers start and closes after they (and the
``after_stop`` hooks) are done. Its close first waits, within the resource's
``close_timeout``, for every checked-out connection to come back, so that a
handler in flight at SIGTERM still completes its write; then it terminates
the pool. A connection it had to cut is named in the report, as a ``cut`` of
the ``resources`` step, with the task that held it, since when and the line
that acquired it::

    resource db: connection held by task 'handler-7' for 2.31s, acquired at app.py:42

and only then is the stop incomplete (exit code 3). Connections taken through
:attr:`PostgresPool.pool` (asyncpg's own pool) are waited for too, but not named.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import asyncpg

from quiesce.stacks import Site, where

__all__ = ["PostgresPool", "postgres_pool"]

#: asyncpg's connection (a pool proxy): untyped, as asyncpg ships no annotations.
Connection = Any


def postgres_pool(
    dsn: str, *, min_size: int = 10, max_size: int = 10, **pool_kwargs: Any
) -> _PoolResource:
    """An asyncpg pool to declare with ``app.resource()``; its value is a :class:`PostgresPool`.

    ``min_size`` and ``max_size`` (asyncpg's defaults) and ``pool_kwargs``
    (``command_timeout``, ``init``, ``setup``, ``ssl``...) go to
    :func:`asyncpg.create_pool` as they are. Nothing connects until the app
    enters the resource; the resource is named ``postgres`` unless given a name.
    Entering raises whatever asyncpg raises (the start fails with it, naming the
    resource); a pool opened in part is terminated.
    """
    return _PoolResource(dsn, dict(pool_kwargs, min_size=min_size, max_size=max_size))


@dataclass(frozen=True)
class _Holder:
    """Who took a connection, from where and when."""

    task: asyncio.Task[Any] | None
    site: Site
    since: float

    def describe(self, now: float) -> str:
        name = self.task.get_name() if self.task is not None else "?"
        line = (
            f"connection held by task {name!r} for {now - self.since:.2f}s, "
            f"acquired at {where(*self.site)}"
        )
        if self.task is not None and self.task.done():
            line += " (the task ended without releasing it)"
        return line


class PostgresPool:
    """An asyncpg pool that records who holds each connection (the task, the line, since when).

    Use :meth:`acquire` (``async with pool.acquire() as conn`` or ``await``
    then :meth:`release`) or the query shortcuts; a connection is tracked from
    its acquire to its release. At the app's stop it is a
    :class:`~quiesce.resources.NamesLeaks`: :meth:`leaks` names the connections
    its close had to terminate.
    """

    def __init__(self, pool: Any) -> None:
        #: The asyncpg :class:`asyncpg.Pool`; connections taken from it directly are not named.
        self.pool = pool
        self._held: dict[int, _Holder] = {}
        self._leaks: list[str] = []

    def acquire(self, *, timeout: float | None = None) -> Acquire:
        """A connection: ``async with pool.acquire() as conn:``, or ``conn = await pool.acquire()``.

        ``timeout`` bounds the wait for a free connection. Awaited (not used
        with ``async with``), the connection must be given back with :meth:`release`.

        Raises:
            asyncpg.InterfaceError: the pool is closing (the app is stopping).
            TimeoutError: no connection was free within ``timeout``.

        """
        caller = sys._getframe(1)  # the line the report names: the user's
        return Acquire(self, timeout, (caller.f_code, caller.f_lineno))

    async def release(self, connection: Connection, *, timeout: float | None = None) -> None:
        """Give back a connection taken with ``await pool.acquire()``.

        Raises:
            asyncpg.InterfaceError: the connection is not one of this pool's.

        """
        self._held.pop(id(connection), None)
        await self.pool.release(connection, timeout=timeout)

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        """Run ``query`` on a pooled connection; its status (``INSERT 0 1``)."""
        async with self._checkout(sys._getframe(1)) as conn:
            status: str = await conn.execute(query, *args, timeout=timeout)
            return status

    async def executemany(
        self, command: str, args: Iterable[Sequence[object]], *, timeout: float | None = None
    ) -> None:
        """Run ``command`` once for each argument sequence of ``args``, on one pooled connection."""
        async with self._checkout(sys._getframe(1)) as conn:
            await conn.executemany(command, args, timeout=timeout)

    async def fetch(self, query: str, *args: object, timeout: float | None = None) -> list[Any]:
        """The rows (``asyncpg.Record``) of ``query``, on a pooled connection."""
        async with self._checkout(sys._getframe(1)) as conn:
            rows: list[Any] = await conn.fetch(query, *args, timeout=timeout)
            return rows

    async def fetchrow(self, query: str, *args: object, timeout: float | None = None) -> Any:
        """The first row (``asyncpg.Record``) of ``query``, or None, on a pooled connection."""
        async with self._checkout(sys._getframe(1)) as conn:
            return await conn.fetchrow(query, *args, timeout=timeout)

    async def fetchval(
        self, query: str, *args: object, column: int = 0, timeout: float | None = None
    ) -> Any:
        """One value of the first row of ``query`` (or None), on a pooled connection."""
        async with self._checkout(sys._getframe(1)) as conn:
            return await conn.fetchval(query, *args, column=column, timeout=timeout)

    def held(self) -> list[str]:
        """Who holds a connection now, one line each (as :meth:`leaks` would name them)."""
        now = time.monotonic()
        return [holder.describe(now) for holder in self._held.values()]

    def leaks(self) -> list[str]:
        """The connections still checked out when the close had to terminate the pool."""
        return list(self._leaks)

    # -- tracking ----------------------------------------------------------------

    async def _take(self, timeout: float | None, site: Site) -> Connection:
        conn = await self.pool.acquire(timeout=timeout)
        self._held[id(conn)] = _Holder(asyncio.current_task(), site, time.monotonic())
        return conn

    @contextlib.asynccontextmanager
    async def _checkout(self, frame: Any) -> Any:
        conn = await self._take(None, (frame.f_code, frame.f_lineno))
        try:
            yield conn
        finally:
            await self.release(conn)

    async def _close(self) -> None:
        """Wait for every connection to come back, close them; cut (cancelled): terminate."""
        try:
            await self.pool.close()
        except BaseException:
            # asyncpg has terminated the pool already (it does on any error or cancel);
            # what was still checked out is what the stop cut.
            self._leaks = self.held()
            self.pool.terminate()
            raise


class Acquire:
    """What :meth:`PostgresPool.acquire` returns: awaitable, and an async context manager."""

    def __init__(self, pool: PostgresPool, timeout: float | None, site: Site) -> None:
        self._pool = pool
        self._timeout = timeout
        self._site = site
        self._conn: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._pool._take(self._timeout, self._site).__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._pool._take(self._timeout, self._site)
        return self._conn

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)


class _PoolResource(contextlib.AbstractAsyncContextManager[PostgresPool]):
    """The resource :func:`postgres_pool` declares: opens the pool on enter, closes it on exit."""

    def __init__(self, dsn: str, pool_kwargs: dict[str, Any]) -> None:
        self.__name__ = "postgres"  # the resource's name unless given one
        self._dsn = dsn
        self._pool_kwargs = pool_kwargs
        self._value: PostgresPool | None = None

    def __repr__(self) -> str:
        return "postgres_pool(...)"  # never the DSN: it may carry a password

    async def __aenter__(self) -> PostgresPool:
        pool = asyncpg.create_pool(self._dsn, **self._pool_kwargs)
        try:
            await pool
        except BaseException:
            # Connections opened before the failure (or the start's timeout) are not left open.
            with contextlib.suppress(Exception):
                pool.terminate()
            raise
        self._value = PostgresPool(pool)
        return self._value

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._value is not None:
            await self._value._close()
