"""One worker of ``quiesce run --workers``: ``python -m quiesce.workers.worker FD``.

``FD`` is the worker's end of its control channel (:mod:`quiesce.workers.channel`).
It reads its hello there, then loads the target exactly as ``quiesce run``
does (the same flags, ``QUIESCE_*`` variables, config file and folder), and:

- with ``describe`` in the hello, sends the App's description and exits 0;
- else runs the App, changed in four ways: no registry (the supervisor
  registers the one instance), SIGTERM its only stop signal (it runs in a
  session of its own: a terminal's Ctrl+C reaches only the supervisor), the
  supervisor's ports, and its report written where the supervisor reads it.
  It says ``ready`` once ``app.ready`` is set (every server ready). A ``stop``
  message sets ``stop_timeout`` to the budget the supervisor has left (and,
  for a reload, the drain), then stops the App as a SIGTERM does, so that a
  later SIGTERM forces it as usual. The end of the channel (the supervisor
  is gone) stops it too: a worker never outlives its supervisor.

A target that cannot be loaded is one line on stderr and exit 1; any other
bad configuration exit 2 (the supervisor exits with the same code).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any, NoReturn

from quiesce.app import App
from quiesce.cli.run import LEVELS, check_app, load_app, options_of
from quiesce.cli.target import TargetError
from quiesce.errors import ConfigError
from quiesce.observe import Observer
from quiesce.process import configure_logging
from quiesce.servers.listening import ListeningServer
from quiesce.workers.channel import Channel, receive_now, send_now
from quiesce.workers.describe import describe

__all__ = ["LOG_FORMAT", "Link", "main"]

#: The log format of the supervisor and its workers: the pid says which process wrote a line.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

logger = logging.getLogger("quiesce.workers")


def main(argv: list[str]) -> NoReturn:
    """Describe or serve the target, as the hello on channel ``argv[0]`` says; always exits."""
    if len(argv) != 1 or not argv[0].isdigit():
        print(
            "usage: python -m quiesce.workers.worker FD (started by quiesce run)", file=sys.stderr
        )
        sys.exit(2)
    sock = socket.socket(fileno=int(argv[0]))
    hello = receive_now(sock)
    if hello is None:
        print("quiesce worker: no hello from the supervisor", file=sys.stderr)
        sys.exit(2)
    try:
        app = _load(hello)
        if hello.get("describe"):
            send_now(sock, {"describe": describe(app)})
            sys.exit(0)
    except ConfigError as exc:
        code = 1 if isinstance(exc, TargetError) else 2
        print(f"quiesce: {exc}", file=sys.stderr, flush=True)
        send_now(sock, {"error": str(exc), "code": code})
        sys.exit(code)
    _as_worker(app, hello)
    app.lifecycle.observers.add(Link(app, sock))
    app.run()


def _load(hello: dict[str, Any]) -> App:
    """The App as ``quiesce run`` builds it from these flags, checked; logging set up first."""
    flags = hello.get("flags")
    cwd = hello.get("cwd")
    if not isinstance(flags, dict) or not isinstance(cwd, str):
        raise ConfigError("worker: a hello without flags or folder")
    settings = options_of(flags, os.environ, cwd)
    level = settings["log_level"].value if "log_level" in settings else "info"
    if configure_logging(LEVELS[level]):
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
    app, _ = load_app(settings)
    check_app(app, settings)
    return app


def _as_worker(app: App, hello: dict[str, Any]) -> None:
    """Make ``app`` one worker of the supervisor's pool."""
    ports = hello.get("ports") or {}
    for server in app.servers:
        if isinstance(server, ListeningServer) and server.name in ports:
            server.port = int(ports[server.name])
    app.registry = None
    app.signals = (signal.SIGTERM,)
    reports = hello.get("reports")
    app.report_file = os.path.join(reports, f"{os.getpid()}.json") if reports else None


class Link(Observer):
    """The worker's side of the channel, in the App's loop from the start of its run."""

    def __init__(self, app: App, sock: socket.socket) -> None:
        self._app = app
        self._sock = sock
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def sequence_began(self, kind: str) -> None:
        """At the start: listen to the supervisor (in the App's loop, which runs now)."""
        if kind == "start" and self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._serve(), name="quiesce worker link")

    async def _serve(self) -> None:
        channel = await Channel.open(self._sock)
        ready = asyncio.create_task(self._tell_ready(channel), name="quiesce worker ready")
        try:
            while (message := await channel.receive()) is not None:
                if "stop" in message:
                    self._stop(message.get("stop"), message.get("drain"))
                elif "registered" in message:  # the supervisor's one instance
                    self._app.lifecycle.registered = message["registered"] is True
            self._stop(None, None)  # the supervisor is gone
        finally:
            ready.cancel()

    async def _tell_ready(self, channel: Channel) -> None:
        await self._app.ready.wait()
        channel.send({"ready": {"pid": os.getpid(), "endpoints": list(self._app.info.endpoints)}})

    def _stop(self, budget: object, drain: object) -> None:
        if self._stopping:
            return
        self._stopping = True
        if isinstance(budget, int | float) and not isinstance(budget, bool):
            self._app.stop_timeout = max(float(budget), 0.01)
        if isinstance(drain, int | float) and not isinstance(drain, bool) and drain >= 0:
            self._app.drain_delay = float(drain)
        # As a SIGTERM: the App's signal handling then takes a later SIGTERM as the force.
        signal.raise_signal(signal.SIGTERM)


if __name__ == "__main__":
    main(sys.argv[1:])
