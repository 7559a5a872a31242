"""What watches a run as it goes: metrics and traces hang off an :class:`Observer`.

The App tells its :class:`Observers` (on :attr:`quiesce.Lifecycle.observers`)
about each sequence, step, server stop and state change. An observer never
changes the run: whatever one raises is logged once and ignored, and its
``flush`` (a trace exporter's) is bounded by what is left of the stop budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from quiesce.phases import PhaseRecord, State

__all__ = ["Observer", "Observers"]

logger = logging.getLogger("quiesce.lifecycle")


class Observer:
    """Override what you need; every method is a no-op here.

    ``kind`` is ``"start"`` or ``"stop"``. ``outcome`` of a sequence is
    ``"clean"``, ``"incomplete"``, ``"failed"`` or ``"aborted"`` (a start cut
    short by a stop request).
    """

    def sequence_began(self, kind: str) -> None:
        """The start or the stop begins."""

    def step_began(self, kind: str, step: str) -> None:
        """A step of the sequence begins."""

    def step_ended(self, kind: str, record: PhaseRecord) -> None:
        """A step ended (or was skipped); ``record`` is final."""

    def server_stop_began(self, server: str, in_flight: int | None) -> None:
        """The stop of ``server`` begins (``in_flight``: None when the server cannot tell)."""

    def server_stop_ended(self, server: str, in_flight: int | None, cut: Sequence[str]) -> None:
        """The stop of ``server`` ended; ``cut`` names what it cut."""

    def sequence_ended(self, kind: str, outcome: str) -> None:
        """The start or the stop ended."""

    def state_changed(self, state: State) -> None:
        """The app's state moved to ``state``."""

    async def flush(self, timeout: float) -> None:
        """Send what is buffered, within ``timeout`` seconds (at the very end of the run)."""


class Observers(Observer):
    """Several observers as one; each call reaches every one, whatever the others raise."""

    def __init__(self) -> None:
        self.observers: list[Observer] = []
        self._failed: set[int] = set()

    def add(self, observer: Observer) -> Observer:
        """Add ``observer``; returns it."""
        self.observers.append(observer)
        return observer

    def _each(self, call: Callable[[Observer], object]) -> None:
        for observer in self.observers:
            try:
                call(observer)
            except Exception as exc:
                self._failed_once(observer, exc)

    def _failed_once(self, observer: Observer, exc: Exception) -> None:
        if id(observer) not in self._failed:
            self._failed.add(id(observer))
            logger.warning("observer %r failed (ignored from now on): %r", observer, exc)

    def sequence_began(self, kind: str) -> None:  # noqa: D102
        self._each(lambda o: o.sequence_began(kind))

    def step_began(self, kind: str, step: str) -> None:  # noqa: D102
        self._each(lambda o: o.step_began(kind, step))

    def step_ended(self, kind: str, record: PhaseRecord) -> None:  # noqa: D102
        self._each(lambda o: o.step_ended(kind, record))

    def server_stop_began(self, server: str, in_flight: int | None) -> None:  # noqa: D102
        self._each(lambda o: o.server_stop_began(server, in_flight))

    def server_stop_ended(  # noqa: D102
        self, server: str, in_flight: int | None, cut: Sequence[str]
    ) -> None:
        self._each(lambda o: o.server_stop_ended(server, in_flight, cut))

    def sequence_ended(self, kind: str, outcome: str) -> None:  # noqa: D102
        self._each(lambda o: o.sequence_ended(kind, outcome))

    def state_changed(self, state: State) -> None:  # noqa: D102
        self._each(lambda o: o.state_changed(state))

    async def flush(self, timeout: float) -> list[str]:  # type: ignore[override]
        """Flush every observer concurrently, all within ``timeout``; returns those cut."""
        if not self.observers:
            return []

        failed: list[str] = []

        async def one(observer: Observer) -> None:
            try:
                await observer.flush(timeout)
            except Exception as exc:  # what it buffered is lost as surely as when cut
                self._failed_once(observer, exc)
                failed.append(f"observer {observer!r}: flush failed: {exc!r}")

        tasks = {asyncio.ensure_future(one(o)): o for o in self.observers}
        _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.001))
        for task in pending:
            task.cancel()
        cut = [f"observer {tasks[task]!r}: flush cut at {timeout:.3g}s" for task in pending]
        for line in cut:  # a failed one was logged as it failed
            logger.warning("%s (what it buffered is lost)", line)
        return cut + failed
