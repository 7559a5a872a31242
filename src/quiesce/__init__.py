"""quiesce: a lifecycle runtime for asyncio services.

Start servers concurrently, register once they are really listening, and on a
signal take the instance out of traffic and stop it in bounded, ordered,
reported phases so that no accepted request, message or background job is
lost. See :class:`App`.
"""

from __future__ import annotations

from quiesce.app import App, AppInfo, LifecycleEvent
from quiesce.errors import (
    ConfigError,
    DependencyCycleError,
    QuiesceError,
    ServerExitedError,
    StartError,
    StoppedError,
)
from quiesce.phases import Outcome, PhaseRecord, State
from quiesce.registry import Instance, Registry
from quiesce.report import ExitCode, Report
from quiesce.resources import Resource
from quiesce.servers import Server
from quiesce.tasks import Guard, PeriodicJob

__all__ = [
    "App",
    "AppInfo",
    "ConfigError",
    "DependencyCycleError",
    "ExitCode",
    "Guard",
    "Instance",
    "LifecycleEvent",
    "Outcome",
    "PeriodicJob",
    "PhaseRecord",
    "QuiesceError",
    "Registry",
    "Report",
    "Resource",
    "Server",
    "ServerExitedError",
    "StartError",
    "State",
    "StoppedError",
]

__version__ = "0.1.0"
