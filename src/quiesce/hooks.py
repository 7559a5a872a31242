"""Lifecycle hooks: sync or async callables, each bounded, each error kept.

Sync callables run in a daemon thread so that a hung one is abandoned at its
timeout instead of blocking the event loop or the interpreter's exit. The
stop's hooks run only when their pair of the start did: ``before_stop`` after
``after_start``, ``after_stop`` after ``before_start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from quiesce.config import check_seconds
from quiesce.errors import ConfigError
from quiesce.phases import Deadline, PhaseRecord, Sequence

__all__ = ["Hook", "HookEntry", "Hooks", "call", "callable_name", "run_hooks"]

T = TypeVar("T")
Hook = Callable[[], Any]


@dataclass(frozen=True)
class HookEntry:
    """A hook as declared: the callable, and its own timeout (None: the app's ``hook_timeout``)."""

    fn: Hook
    timeout: float | None = None


def callable_name(fn: Callable[..., Any]) -> str:
    """A readable name for a hook or job: ``module.qualname``."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


async def call(fn: Callable[[], Any]) -> Any:
    """Call ``fn``: await it if it is (or returns) awaitable, else run it in a daemon thread."""
    if inspect.iscoroutinefunction(fn):
        return await fn()
    result = await _in_daemon_thread(fn)
    if inspect.isawaitable(result):
        return await result
    return result


async def _in_daemon_thread(fn: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        outcome: tuple[bool, Any]
        try:
            outcome = (True, fn())
        except BaseException as exc:  # handed over to the awaiting task
            outcome = (False, exc)
        # The caller may have given up (timeout, forced end) and the loop closed since.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name=callable_name(fn), daemon=True).start()
    return await future


async def run_hooks(
    hooks: Iterable[HookEntry], record: PhaseRecord, *, timeout: float, budget: float
) -> None:
    """Run ``hooks`` in order, each within its own timeout, all of them within ``budget`` seconds.

    A hook without a timeout of its own gets ``timeout``. A hook that raises
    or times out is recorded on ``record`` and the next hook still runs (with
    whatever budget is left); nothing is raised.
    """
    deadline = Deadline(budget)
    for entry in hooks:
        name = callable_name(entry.fn)
        record.waited_for.append(name)
        own = timeout if entry.timeout is None else entry.timeout
        bound = min(own, deadline.remaining())
        try:
            async with asyncio.timeout(bound):
                await call(entry.fn)
        except TimeoutError:
            record.timed_out(f"hook {name} (timeout {bound:.3g}s)")
        except Exception as exc:
            record.error(f"hook {name}", exc)


#: Each stop hook group and the start hook group it pairs with.
PAIRED = {"before_stop": "after_start", "after_stop": "before_start"}


class Hooks:
    """An app's four hook groups, run as steps of its sequences.

    Each hook runs within its own timeout, or :attr:`timeout` (the app's
    ``hook_timeout``) when it has none.
    """

    def __init__(self) -> None:
        self.groups: dict[str, list[HookEntry]] = {
            group: [] for group in ("before_start", "after_start", "before_stop", "after_stop")
        }
        #: The timeout of each hook without its own (the app's ``hook_timeout``).
        self.timeout = 10.0
        self._ran: set[str] = set()

    def add(self, group: str, fn: Hook, timeout: float | None = None, *, now: bool = False) -> None:
        """Add ``fn`` to ``group``, bounded by ``timeout`` (None: :attr:`timeout`).

        The timeout is checked by :meth:`check` with the rest of the
        configuration, or here with ``now`` (a hook added once the app runs).

        Raises:
            ConfigError: ``fn`` is not callable; with ``now``, a bad ``timeout``.

        """
        if not callable(fn):
            raise ConfigError(f"@app.{group}: {fn!r} is not a function")
        entry = HookEntry(fn, timeout)
        if now:
            _check(group, entry)
        self.groups[group].append(entry)

    def check(self) -> None:
        """Check every hook's own timeout.

        Raises:
            ConfigError: ``@app.<group>(<hook>): timeout=<value>: must be ...``.

        """
        for group, entries in self.groups.items():
            for entry in entries:
                _check(group, entry)

    async def step(self, seq: Sequence, group: str, budget: float) -> PhaseRecord:
        """Run ``group`` as a step of ``seq`` within ``budget``; skipped when its pair never ran."""
        paired_with = PAIRED.get(group)
        if paired_with is not None and paired_with not in self._ran:
            return seq.skip(group, f"{paired_with} never ran")
        self._ran.add(group)
        async with seq.step(group, budget) as rec:
            await run_hooks(self.groups[group], rec, timeout=self.timeout, budget=budget)
        return rec


def _check(group: str, entry: HookEntry) -> None:
    if entry.timeout is not None:
        check_seconds({f"@app.{group}({callable_name(entry.fn)}): timeout": entry.timeout})
