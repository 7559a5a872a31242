"""The stop's one budget: its deadline, the cleanup reserve, and each part's share.

``stop_timeout`` is the hard end. A reserve of it is kept so that
``after_stop`` and ``resources`` always run; every step before them shares
what is left before the reserve. Each share is handed to the bound inside a
step (a server's stop timeout, the task phase's wait), and the step's own
timeout (:data:`~quiesce.phases.STEP_BACKSTOP` later) is only a backstop, so
that a cut names the server, task or hook rather than the step.
"""

from __future__ import annotations

from quiesce.phases import STEP_BACKSTOP, Deadline

__all__ = ["SERVER_STOP_MARGIN", "StopBudget"]

#: Extra time a server's stop() gets beyond its own timeout to cancel and close what is left.
SERVER_STOP_MARGIN = 0.25


class StopBudget:
    """The shares of one stop of ``stop_timeout`` seconds, from now.

    ``server_default`` is the stop timeout of a server without its own (None:
    whatever is left before the reserve).
    """

    def __init__(
        self, stop_timeout: float, *, reserve: float, server_default: float | None = None
    ) -> None:
        self.deadline = Deadline(stop_timeout)
        self.reserve = reserve
        self.server_default = server_default

    def serving(self) -> float:
        """Seconds left for the steps before the cleanup (``not_ready`` to ``tasks``)."""
        return self.deadline.remaining(self.reserve)

    def server(self, own: float | None) -> tuple[float, float]:
        """A server's stop timeout now, and the hard bound on its ``stop()`` call.

        The server's own cut (and its margin) ends inside the budget, so that it
        names what it cut before any outer bound fires.
        """
        own = self.server_default if own is None else own
        budget = max(0.0, self.serving() - SERVER_STOP_MARGIN)
        timeout = budget if own is None else min(own, budget)
        return timeout, timeout + SERVER_STOP_MARGIN

    def tasks(self, cancel_grace: float) -> tuple[float, float]:
        """How long tracked tasks are waited for, then how long the cancelled ones get."""
        window = self.serving()
        grace = min(cancel_grace, window)
        return window - grace, grace

    def after_stop(self) -> float:
        """The ``after_stop`` hooks' share: half the reserve stays for the resources."""
        return self.deadline.remaining(self.reserve / 2)

    def resources(self) -> float:
        """The resources' share: up to the deadline, less the step's backstop."""
        return self.deadline.remaining(STEP_BACKSTOP)
