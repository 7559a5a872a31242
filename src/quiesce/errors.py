"""The exceptions quiesce raises, rooted at :class:`QuiesceError`.

::

    QuiesceError
    ├── ConfigError              bad configuration; exit code 2, nothing started
    │   └── DependencyCycleError a depends_on cycle, named edge by edge
    ├── StartError               a part failed to start; exit code 1
    ├── ServerExitedError        a server stopped serving on its own; exit code 1
    ├── StoppedError             spawn/guard after the task phase ended
    └── RegistryError            a registry call failed (quiesce.registry; cause chained)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DependencyCycleError",
    "QuiesceError",
    "ServerExitedError",
    "StartError",
    "StoppedError",
    "describe",
]


class QuiesceError(Exception):
    """Base of every error quiesce raises."""


class ConfigError(QuiesceError):
    """The configuration is invalid; raised before anything binds a port."""


class DependencyCycleError(ConfigError):
    """Servers or resources depend on each other in a cycle.

    ``cycle`` holds the names along the cycle, the first repeated at the end.
    """

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("dependency cycle: " + " -> ".join(cycle))


class StartError(QuiesceError):
    """A part (resource, hook, server, registry) failed to start.

    ``part`` names it, e.g. ``server 'http'``; the cause is chained.
    """

    def __init__(self, part: str, cause: BaseException | str) -> None:
        self.part = part
        detail = cause if isinstance(cause, str) else describe(cause)
        super().__init__(f"{part} failed to start: {detail}")


class ServerExitedError(QuiesceError):
    """A server stopped serving while the app was running."""


class StoppedError(QuiesceError):
    """Tracked work was submitted after the app stopped accepting it."""


def describe(exc: BaseException) -> str:
    """One line for an error: ``Type: first line``; quiesce's own errors speak for themselves."""
    if isinstance(exc, QuiesceError):
        return str(exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
