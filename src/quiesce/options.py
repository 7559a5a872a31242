"""The App's options, checked before anything starts; and the stop budget they add up to.

Kept apart from :mod:`quiesce.app` so that the App reads as its sequences: this
module sees the App only as :class:`Options` (what it reads), never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from quiesce import config
from quiesce.drain import Drain, check_drain
from quiesce.servers.contract import Server, check_servers, own_stop_timeout

__all__ = ["Options", "check_options"]

logger = logging.getLogger("quiesce.lifecycle")


class Options(Protocol):
    """What :func:`check_options` reads of an App."""

    @property
    def name(self) -> object: ...  # noqa: D102
    @property
    def version(self) -> object: ...  # noqa: D102
    @property
    def servers(self) -> Sequence[Server]: ...  # noqa: D102
    @property
    def signals(self) -> object: ...  # noqa: D102
    @property
    def drain_delay(self) -> float | Drain: ...  # noqa: D102
    @property
    def stop_timeout(self) -> float: ...  # noqa: D102
    @property
    def start_timeout(self) -> float: ...  # noqa: D102
    @property
    def hook_timeout(self) -> float: ...  # noqa: D102
    @property
    def registry_timeout(self) -> float: ...  # noqa: D102
    @property
    def grace_period(self) -> float: ...  # noqa: D102
    @property
    def server_stop_timeout(self) -> float | None: ...  # noqa: D102
    @property
    def cleanup_reserve(self) -> float: ...  # noqa: D102
    @property
    def cancel_grace(self) -> float: ...  # noqa: D102


def check_options(app: Options, *, stop_hooks: Sequence[float | None]) -> str:
    """Check the App's own options (its parts are checked where they are kept).

    ``stop_hooks`` is the own timeout of each ``before_stop`` and ``after_stop``
    hook (None: the app's ``hook_timeout``). Returns the stop budget line (see
    :func:`config.stop_budget_line`); it ends with ``: fits`` unless the stop
    could outlast ``grace_period``.

    Raises:
        ConfigError: the first bad option.

    """
    check_servers(app.servers)
    config.check_signals(app.signals)
    config.check_identity(app.name, app.version)
    config.check_seconds(
        {
            "stop_timeout": app.stop_timeout,
            "start_timeout": app.start_timeout,
            "hook_timeout": app.hook_timeout,
            "registry_timeout": app.registry_timeout,
            "grace_period": app.grace_period,
        }
    )
    drain = check_drain(app.drain_delay)
    reserve = app.cleanup_reserve
    config.check_seconds(
        {"cleanup_reserve": reserve, "cancel_grace": app.cancel_grace}, zero_ok=True
    )
    if app.server_stop_timeout is not None:
        config.check_seconds({"server_stop_timeout": app.server_stop_timeout})
    config.check_stop_budget(
        drain_delay=drain,
        cleanup_reserve=reserve,
        stop_timeout=app.stop_timeout,
        grace_period=app.grace_period,
    )
    rest = app.stop_timeout - drain - reserve  # what a server without its own timeout gets
    own = [own_stop_timeout(s) or app.server_stop_timeout or rest for s in app.servers]
    parts = {
        "drain": drain,
        "server stop": max(own, default=0.0),
        "hooks": sum(app.hook_timeout if own is None else own for own in stop_hooks),
        "cleanup reserve": reserve,
    }
    return config.stop_budget_line(parts, app.stop_timeout, app.grace_period)
