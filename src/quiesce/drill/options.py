"""What a drill runs and how: :class:`DrillOptions`, whose defaults are ``quiesce drill``'s.

Kept apart from the drill's machinery so that the command can build its
options (and their defaults) from here without importing httpx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quiesce.registry import redact

__all__ = ["DrillOptions"]


@dataclass(frozen=True)
class DrillOptions:
    """What to drill and how (``quiesce drill --help`` describes each option)."""

    #: ``module:attr`` or ``file.py:attr``, served by ``quiesce run``; or None with ``command``.
    target: str | None = None
    #: A command line with ``{port}`` (and optionally ``{report}``, ``{registry}``, ``{name}``).
    command: str | None = None
    clients: int = 50
    duration: float = 10.0
    signal_at: float = 3.0
    path: str = "/"
    instances: int = 1
    #: The registry of a rolling restart (None: a private file registry).
    registry: str | None = None
    #: Retries of a refused or broken request (0: the verdict is what a client without sees).
    retries: int = 0
    #: Seconds clients take to notice an instance left or joined (several instances).
    notice_delay: float = 1.0
    ready_timeout: float = 30.0
    #: Seconds after SIGTERM before an instance is killed: the App's stop_timeout (30 s), twice.
    exit_timeout: float = 60.0
    request_timeout: float = 10.0

    def settings(self) -> dict[str, Any]:
        """What ran, for the verdict."""
        settings: dict[str, Any] = {
            "target": self.target,
            "command": self.command,
            "instances": self.instances,
            "clients": self.clients,
            "duration": self.duration,
            "signal_at": self.signal_at,
            "path": self.path,
            "retries": self.retries,
        }
        if self.instances > 1:
            settings["notice_delay"] = self.notice_delay
            settings["registry"] = redact(self.registry) if self.registry else "private"
        return settings
