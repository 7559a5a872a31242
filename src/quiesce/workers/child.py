"""One worker process as the supervisor sees it: started, heard, stopped, killed, reaped.

Its exit is noticed at once through a pidfd in the event loop (a thread
waits for it where there is none). It runs in a session of its own, so a
terminal's Ctrl+C reaches only the supervisor, and a SIGKILL takes its whole
process group (what the worker itself started too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quiesce.workers.channel import Channel, pair, send_now

__all__ = ["Spawn", "Worker", "exit_text"]

logger = logging.getLogger("quiesce.workers")

#: The worker's entry point (``python -m quiesce.workers.worker FD``).
WORKER_MODULE = "quiesce.workers.worker"
#: How long a SIGKILLed worker may take to be reaped before it is given up on.
REAP_TIMEOUT = 2.0
#: After a worker exits, how long what it wrote on the channel may take to be read.
CHANNEL_LINGER = 1.0


@dataclass(frozen=True)
class Spawn:
    """How to start a worker: the hello's common part, its environment, what it inherits."""

    hello: Mapping[str, Any]
    env: Mapping[str, str]
    cwd: str
    #: Descriptors every worker inherits (the shared listening sockets).
    fds: Sequence[int] = ()


class Worker:
    """A worker process, from its start to its reaped exit."""

    def __init__(self, proc: subprocess.Popen[bytes], channel: Channel, generation: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.channel = channel
        #: The reload generation it was started in: a reload replaces every older one.
        self.generation = generation
        self.started_at = time.monotonic()
        self.ready = asyncio.Event()
        self.ready_at: float | None = None
        #: The instance's endpoints, as the worker's App said them when ready.
        self.endpoints: list[str] = []
        #: The line it sent before exiting (it could not load the target), if any.
        self.error: str | None = None
        #: The supervisor asked it to stop (a stop or a reload): its exit is expected.
        self.stopping = False
        #: Started by a reload and not yet part of the pool: the reload judges it.
        self.candidate = False
        self.killed = False
        #: What a describe child sent (None until then).
        self.description: dict[str, Any] | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._channel_ended = False
        self._report: dict[str, Any] | None = None
        self._listener = asyncio.create_task(self._listen(), name=f"quiesce worker {self.pid}")
        self._watch_exit()

    @classmethod
    async def start(cls, spawn: Spawn, generation: int, **hello: Any) -> Worker:
        """Start a worker with ``spawn``'s hello and ``hello``'s extra fields.

        Raises:
            OSError: the process could not be started.

        """
        mine, theirs = pair()
        try:
            # Written before the worker runs: the socket's buffer keeps it until it reads.
            send_now(mine, {**spawn.hello, **hello})
            argv = [sys.executable, "-m", WORKER_MODULE, str(theirs.fileno())]
            # Popen in the loop: a fork and an exec, about a millisecond, once per worker.
            proc = subprocess.Popen(  # noqa: ASYNC220
                argv,
                cwd=spawn.cwd,
                env=dict(spawn.env),
                pass_fds=(theirs.fileno(), *spawn.fds),
                start_new_session=True,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        try:
            channel = await Channel.open(mine)
        except BaseException:  # cancelled (the supervisor stops): no worker left unwatched
            mine.close()
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(REAP_TIMEOUT)  # SIGKILLed: reaped in microseconds
            raise
        return cls(proc, channel, generation)

    # -- what it says -----------------------------------------------------------

    async def _listen(self) -> None:
        while (message := await self.channel.receive()) is not None:
            if isinstance(ready := message.get("ready"), dict):
                self.endpoints = [str(e) for e in ready.get("endpoints", [])]
                self.ready_at = time.monotonic()
                self.ready.set()
            elif "error" in message:
                self.error = str(message["error"])
            elif "describe" in message:
                self.description = message["describe"]
        self._channel_ended = True
        self.channel.close()

    # -- what it is told ----------------------------------------------------------

    def stop(self, budget: float, drain: float | None = None) -> None:
        """Stop within ``budget`` seconds (with a reload's ``drain``); SIGTERM if it cannot hear."""
        self.stopping = True
        if self._channel_ended or not self.channel.send({"stop": budget, "drain": drain}):
            self.signal(signal.SIGTERM)

    def tell(self, message: dict[str, Any]) -> None:
        """Send ``message`` if the worker still listens (what it is only told, not asked)."""
        if not self._channel_ended:
            self.channel.send(message)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker, unless it has exited (its pid may be another's now)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the worker and what it started (its process group)."""
        self.stopping = True
        if self.proc.poll() is not None:
            return
        self.killed = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            self.signal(signal.SIGKILL)

    async def heard(self, timeout: float = CHANNEL_LINGER) -> None:
        """Until everything the worker wrote on the channel has been read (bounded)."""
        await asyncio.wait({self._listener}, timeout=timeout)

    async def wait(self, timeout: float) -> bool:
        """Whether it exited within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True

    async def stop_within(self, budget: float, margin: float, drain: float | None = None) -> int:
        """Stop it, SIGKILL it at ``budget`` + ``margin``, return its exit code."""
        self.stop(budget, drain)
        if not await self.wait(budget + margin):
            self.kill()
            await self.wait(REAP_TIMEOUT)
        return self.proc.returncode if self.proc.returncode is not None else -signal.SIGKILL

    # -- its end ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Not yet exited (as far as the supervisor has noticed)."""
        return not self.exited.done()

    def _watch_exit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: a thread waits instead
            waiter = loop.run_in_executor(None, self.proc.wait)
            waiter.add_done_callback(lambda _: self._reaped())
            return

        def readable() -> None:
            if self.proc.poll() is not None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                self._reaped()

        loop.add_reader(pidfd, readable)

    def _reaped(self) -> None:
        if not self.exited.done() and self.proc.returncode is not None:
            self.exited.set_result(self.proc.returncode)
            # What it wrote before it exited is still read; a process it left behind with
            # its end of the channel must not keep the channel open.
            asyncio.get_running_loop().call_later(CHANNEL_LINGER, self.channel.close)

    def report(self, folder: str | None) -> dict[str, Any] | None:
        """Its App's final report, or None if it wrote none (read once, then kept; file removed)."""
        if self._report is not None or folder is None or self.running:
            return self._report
        path = os.path.join(folder, f"{self.pid}.json")
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
        except (OSError, ValueError):
            return None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._report = data if isinstance(data, dict) else None
        return self._report


def exit_text(code: int | None) -> str:
    """``exit 3``, ``killed by SIGKILL``: how a process ended, in words."""
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}"
