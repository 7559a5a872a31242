"""The service under drill: a subprocess on a loopback port, its readiness, its signal, its exit.

A TARGET is served by ``python -m quiesce run TARGET --host 127.0.0.1 --port
PORT --report-json FILE`` (plus ``--registry URL --name NAME`` with several
instances): it is ready when ``GET /readyz`` answers 200, and its stop report
is read from FILE. A ``--command`` is split like a shell would (:func:`shlex.split`)
and run without one, so that the SIGTERM reaches the service itself and its
exit code is the service's, not a shell's. Its placeholders:

- ``{port}`` (required): the loopback port to listen on;
- ``{report}``: a path where it may write a quiesce stop report (JSON);
- ``{registry}`` and ``{name}``: the registry URL and service name, for a
  command that registers itself; one that does not is registered by the drill.

A command is ready when ``GET <path>`` answers at all. Each process stays in
the drill's process group, so that whoever kills that group (a CI runner
cancelling the job, even with SIGKILL) kills the services too; the drill
itself kills them when it ends or is interrupted. Their output goes to a file
of the drill's private directory; its last line explains a service that exits
before it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from quiesce.backoff import backoff_delay
from quiesce.drill.verdict import Stop
from quiesce.errors import ConfigError, QuiesceError
from quiesce.registry import Instance, Registry

__all__ = [
    "DrillError",
    "Launch",
    "Service",
    "free_port",
    "kill_all",
    "register",
    "start",
    "terminate",
    "wait_exit",
    "wait_ready",
    "withdraw",
]

#: Bound on one readiness probe; a service that takes longer to answer it is not ready yet.
PROBE_TIMEOUT = 1.0
#: First pause between two readiness probes; doubles up to the cap (a service starting
#: in ~50 ms is seen at once, one importing for seconds costs few probes).
PROBE_FIRST = 0.02
PROBE_CAP = 0.25
#: Bound on registering or withdrawing an instance the drill registers itself.
REGISTRY_TIMEOUT = 5.0
#: Bound on reaping a process after SIGKILL (the kernel ends it; this is only the wait).
KILL_TIMEOUT = 5.0
#: Bytes of a service's output read for its last lines.
OUTPUT_TAIL = 16384


class DrillError(QuiesceError):
    """The drill could not run: a service that never became ready, a registry that failed."""


@dataclass(frozen=True)
class Launch:
    """How each instance of the service is started.

    Args:
        target: ``module:attr`` or ``file.py:attr`` for ``quiesce run`` (or None).
        command: a command line with ``{port}`` (or None); exactly one of the two.
        path: the path the load requests; a command's readiness probe.
        workdir: the drill's private directory (owner-only): reports and output go there.
        registry: the registry URL when several instances run, else None.
        name: the service name instances register under, else None.

    """

    target: str | None
    command: str | None
    path: str
    workdir: Path
    registry: str | None = None
    name: str | None = None

    @property
    def writes_report(self) -> bool:
        """True when the service is asked to write a stop report."""
        return self.target is not None or "{report}" in (self.command or "")

    @property
    def registers_itself(self) -> bool:
        """True when the service registers itself (else the drill registers it)."""
        return self.target is not None or "{registry}" in (self.command or "")

    def argv(self, port: int, report: Path) -> list[str]:
        """The command line of one instance on ``port``, writing its report to ``report``."""
        if self.target is not None:
            argv = [sys.executable, "-m", "quiesce", "run", self.target]
            argv += ["--host", "127.0.0.1", "--port", str(port), "--report-json", str(report)]
            if self.registry is not None and self.name is not None:
                argv += ["--registry", self.registry, "--name", self.name]
            return argv
        assert self.command is not None
        values = {
            "{port}": str(port),
            "{report}": str(report),
            "{registry}": self.registry or "",
            "{name}": self.name or "",
        }
        words = []
        # Replaced word by word after splitting: a value with spaces stays one argument,
        # and other braces in the command (JSON, say) are left alone.
        for word in shlex.split(self.command):
            for placeholder, value in values.items():
                word = word.replace(placeholder, value)
            words.append(word)
        return words


@dataclass
class Service:
    """One running instance: its process and what the drill saw of it (monotonic times)."""

    label: str
    port: int
    proc: asyncio.subprocess.Process
    report_path: Path
    output_path: Path
    #: The instance the drill registered for it (a command that does not register itself).
    registered: Instance | None = None
    signalled: float | None = None
    exited: float | None = None
    exit_code: int | None = None
    #: True when it did not exit within the exit timeout and was killed.
    killed: bool = False
    #: The stop report it wrote, once it exited (None: none, see report_note).
    report: dict[str, Any] | None = None
    report_note: str = ""
    #: Done when the process has exited (its code); :attr:`exited` is set then.
    ended: asyncio.Future[int] = field(init=False)

    def __post_init__(self) -> None:
        self.ended = asyncio.ensure_future(self.proc.wait())
        self.ended.add_done_callback(self._on_exit)

    def _on_exit(self, ended: asyncio.Future[int]) -> None:
        self.exited = time.monotonic()
        self.exit_code = self.proc.returncode

    def stop(self) -> Stop:
        """What the drill saw of its stop, for the verdict."""
        return Stop(
            label=self.label,
            port=self.port,
            signalled=self.signalled,
            exited=self.exited,
            exit_code=self.exit_code,
            killed=self.killed,
            report=self.report,
            report_note=self.report_note,
            output=self.last_output(3) if self.exit_code != 0 else (),
        )

    @property
    def endpoint(self) -> str:
        """The HTTP origin of this instance."""
        return f"http://127.0.0.1:{self.port}"

    def last_output(self, lines: int = 1) -> list[str]:
        """The last non-blank lines the service wrote (stdout and stderr together)."""
        try:
            with self.output_path.open("rb") as output:
                # Only the tail: an access log of a few seconds of load is megabytes.
                output.seek(max(0, output.seek(0, os.SEEK_END) - OUTPUT_TAIL))
                text = output.read().decode(errors="replace")
        except OSError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()][-lines:]

    def read_report(self, launch: Launch) -> None:
        """Read the stop report it wrote into :attr:`report`, or say in the note why none."""
        if not launch.writes_report:
            self.report_note = (
                "no stop report: a --command service writes none unless its command has "
                "{report}; the stop is judged by the exit code alone"
            )
            return
        try:
            data = json.loads(self.report_path.read_text())
        except FileNotFoundError:
            self.report_note = f"no stop report: the service wrote none to {self.report_path}"
            return
        except (OSError, ValueError) as exc:
            self.report_note = f"stop report {self.report_path} unreadable: {exc}"
            return
        if isinstance(data, dict):
            self.report = data
        else:
            self.report_note = f"stop report {self.report_path}: not a JSON object"


def free_port() -> int:
    """A loopback port free right now (the service binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start(launch: Launch, label: str, port: int) -> Service:
    """Start one instance on ``port``; it inherits the drill's environment.

    Raises:
        ConfigError: the command cannot be run at all (not found, not executable).

    """
    report = launch.workdir / f"report-{label}.json"
    output_path = launch.workdir / f"output-{label}.log"
    argv = launch.argv(port, report)
    fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
        )
    except OSError as exc:
        raise ConfigError(f"--command: cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return Service(label, port, proc, report, output_path)


async def wait_ready(service: Service, launch: Launch, timeout: float) -> httpx.Response:
    """Probe until the instance is ready; returns the probe's answer.

    Ready: ``GET /readyz`` answers 200 for a TARGET, ``GET <path>`` answers at all
    for a command. Probing stops at once when the process exits.

    Raises:
        ConfigError: the service exited 2 (its bad configuration) before it was ready.
        DrillError: it exited otherwise, or was not ready within ``timeout`` (it is killed).

    """
    url = service.endpoint + ("/readyz" if launch.target is not None else launch.path)
    try:
        async with (
            httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as http,
            asyncio.timeout(timeout),
        ):
            failures = 0
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    response = await http.get(url)
                    if launch.target is None or response.status_code == 200:
                        return response
                failures += 1
                # No event says "now it listens": probe again after a backoff, or at once
                # learn that it exited.
                pause = backoff_delay(failures, first=PROBE_FIRST, cap=PROBE_CAP)
                done, _ = await asyncio.wait({service.ended}, timeout=pause)
                if done:
                    raise _exited_early(service, launch)
    except TimeoutError:
        await _kill(service)
        last = service.last_output()
        said = f"; its last output: {last[0]}" if last else ""
        raise DrillError(
            f"{service.label}: {url} not ready within {timeout:g}s (--ready-timeout){said}"
        ) from None


def _exited_early(service: Service, launch: Launch) -> QuiesceError:
    code = service.proc.returncode
    last = service.last_output()
    said = f": {last[0]}" if last else " (it printed nothing)"
    what = f"the service {launch.target!r}" if launch.target else "the --command service"
    if code == 2:
        return ConfigError(f"{what} exited 2 (bad configuration){said}")
    return DrillError(f"{service.label}: {what} exited {code} before it was ready{said}")


async def register(registry: Registry, service: Service, name: str) -> None:
    """Register an instance that does not register itself, as its orchestrator would.

    Raises:
        DrillError: the registry failed or did not answer within REGISTRY_TIMEOUT.

    """
    instance = Instance(id=f"drill-{service.label}", name=name, endpoints=[service.endpoint])
    try:
        async with asyncio.timeout(REGISTRY_TIMEOUT):
            await registry.register(instance)
    except (TimeoutError, QuiesceError, OSError) as exc:
        raise DrillError(f"{service.label}: registering it failed: {exc!r}") from None
    service.registered = instance


async def terminate(service: Service, registry: Registry | None) -> None:
    """Send SIGTERM and withdraw the instance (when the drill registered it), together.

    As Kubernetes does, the endpoint goes away at the moment the signal is sent;
    clients learn of it only as fast as their discovery does.

    Raises:
        DrillError: withdrawing it failed (the signal has been sent).

    """
    service.signalled = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        service.proc.send_signal(signal.SIGTERM)
    await withdraw(service, registry)


async def withdraw(service: Service, registry: Registry | None) -> None:
    """Deregister the instance the drill registered for ``service``, if it did.

    Raises:
        DrillError: the registry failed or did not answer within REGISTRY_TIMEOUT.

    """
    if service.registered is None or registry is None:
        return
    instance, service.registered = service.registered, None
    try:
        async with asyncio.timeout(REGISTRY_TIMEOUT):
            await registry.deregister(instance)
    except (TimeoutError, QuiesceError, OSError) as exc:
        raise DrillError(f"{service.label}: withdrawing it failed: {exc!r}") from None


async def wait_exit(service: Service, launch: Launch, timeout: float) -> None:
    """Wait up to ``timeout`` for the exit (SIGKILL after it), then read the stop report."""
    done, _ = await asyncio.wait({service.ended}, timeout=timeout)
    if not done:
        service.killed = True
        await _kill(service)
    service.read_report(launch)


async def _kill(service: Service) -> None:
    if service.ended.done():
        return
    with contextlib.suppress(ProcessLookupError):
        service.proc.kill()
    await asyncio.wait({service.ended}, timeout=KILL_TIMEOUT)


async def kill_all(services: list[Service]) -> None:
    """Kill every instance still running (the drill ends, or was interrupted)."""
    await asyncio.gather(*(_kill(s) for s in services))
