"""``app.resource(...).value`` is typed by what the factory yields: mypy --strict checks this file.

Each ``assert_type`` fails type checking if ``resource()`` gives ``Resource[Any]``
(mypy: "Expression is of type Any"); the tests run the same factories through
an App, so the static types are the ones the values really have.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, assert_type

from quiesce import App, ExitCode, Resource
from quiesce.postgres import PostgresPool, postgres_pool


class Pool:
    """Stands for what a factory makes (a pool, a client)."""


@asynccontextmanager
async def async_cm_function() -> AsyncIterator[Pool]:
    yield Pool()


async def async_generator() -> AsyncIterator[Pool]:
    yield Pool()


@contextmanager
def sync_cm_function() -> Iterator[Pool]:
    yield Pool()


async def awaitable_of_cm() -> AbstractAsyncContextManager[Pool]:
    return async_cm_function()


def declare(app: App) -> list[Resource[Pool]]:
    """Every factory form; each handle's value type pinned."""
    forms = [
        app.resource(async_cm_function, name="a"),
        app.resource(async_cm_function(), name="b"),
        app.resource(async_generator, name="c"),
        app.resource(sync_cm_function, name="d"),
        app.resource(sync_cm_function(), name="e"),
        app.resource(awaitable_of_cm, name="f"),
        app.resource(lambda: async_cm_function(), name="g"),
    ]
    for res in forms:
        assert_type(res, Resource[Pool])
    return forms


def declare_postgres(app: App, dsn: str) -> Resource[PostgresPool]:
    db = app.resource(postgres_pool(dsn, min_size=1, max_size=16), close_timeout=15)
    return assert_type(db, Resource[PostgresPool])


def hooks(app: App) -> None:
    def flush() -> None: ...

    async def sync_to_disk() -> int:
        return 1

    assert_type(app.after_stop(flush), Callable[[], None])
    assert_type(app.after_stop(timeout=60)(sync_to_disk), Callable[[], Coroutine[Any, Any, int]])
    decorated = app.before_stop(timeout=5)(flush)
    assert_type(decorated, Callable[[], None])


async def test_every_factory_form_enters_with_the_value_its_type_says() -> None:
    app = App(name="svc")
    forms = declare(app)
    values: list[object] = []

    @app.after_start
    def look() -> None:
        for res in forms:
            value = res.value
            values.append(assert_type(value, Pool))
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert len(values) == len(forms)
    assert all(isinstance(v, Pool) for v in values)


async def test_postgres_pool_value_is_a_postgres_pool(postgres_dsn: str) -> None:
    app = App(name="svc")
    db = declare_postgres(app, postgres_dsn)
    seen: list[object] = []

    @app.after_start
    def look() -> None:
        seen.append(assert_type(db.value, PostgresPool))
        app.stop()

    async with asyncio.timeout(10):
        report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert isinstance(seen[0], PostgresPool)
    assert db.name == "postgres"
