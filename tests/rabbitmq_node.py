"""A RabbitMQ node of a test's own, apart from the machine's, that a test may restart."""

from __future__ import annotations

import os
import secrets
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from daemons import COMMAND_TIMEOUT, LOOPBACK, PROBE_TIMEOUT, Daemon, accepts, ask, with_free_ports
from debian import installed

LOCAL_AMQP_PORT = 5672
#: Bound on a node accepting AMQP clients after it was started (it boots in ~5 s).
RABBITMQ_START_TIMEOUT = 60.0
#: Bound on the node's own epmd accepting connections.
EPMD_START_TIMEOUT = 10.0


def amqp_url_at(port: int) -> str:
    """``amqp://guest:guest@127.0.0.1:<port>/``."""
    return f"amqp://guest:guest@{LOOPBACK}:{port}/"


def rabbitmq_programs() -> tuple[str, str]:
    """The paths of rabbitmq-server and rabbitmqctl (Debian's rabbitmq-server if missing).

    Not /usr/sbin's wrappers: run as root they switch to the rabbitmq user, its
    HOME and so the system node's Erlang cookie.
    """
    where = ["/usr/lib/rabbitmq/bin"]
    return (
        installed("rabbitmq-server", "rabbitmq-server", where=where),
        installed("rabbitmqctl", "rabbitmq-server", where=where),
    )


def amqp_answers(port: int = LOCAL_AMQP_PORT, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether an AMQP 0-9-1 broker on loopback ``port`` opens a handshake in ``timeout``.

    The protocol header is sent; the broker must answer with a method frame on
    channel 0 carrying Connection.Start (class 10, method 10).
    """
    frame = ask(port, b"AMQP\x00\x00\x09\x01", 11, timeout)
    if len(frame) < 11:
        return False
    kind, channel, _size, class_id, method_id = struct.unpack(">BHIHH", frame)
    return (kind, channel, class_id, method_id) == (1, 0, 10, 10)


class PrivateRabbitMQ:
    """A RabbitMQ node of a test's own: its own name, ports, epmd, cookie and directories.

    Nothing is shared with the machine's node: the node registers with an epmd
    of its own (ERL_EPMD_PORT), HOME (its Erlang cookie), the Mnesia and log
    directories are under ``workdir``, the system's config and env files are
    replaced by empty ones, and no plugin (management) is enabled. Every port,
    Erlang distribution included, is on loopback. Boot takes ~5 s.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        home = workdir / "home"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (workdir / "enabled_plugins").write_text("[].\n")
        for empty in ("rabbitmq.conf", "rabbitmq-env.conf"):
            (workdir / empty).touch()
        self.server, self.rabbitmqctl = rabbitmq_programs()
        self.node = f"quiesce_{uuid.uuid4().hex[:10]}@localhost"
        self.port = 0
        self.env: dict[str, str] = {}
        self.epmd: Daemon | None = None
        self.daemon: Daemon | None = None
        try:
            with_free_ports(4, self._boot)
        except BaseException:
            self.close()
            raise

    def _boot(self, ports: list[int]) -> None:
        self.close()
        self.port, dist, epmd, ctl = ports
        self.env = dict(
            os.environ,
            HOME=str(self.workdir / "home"),
            ERL_EPMD_PORT=str(epmd),
            ERL_EPMD_ADDRESS=LOOPBACK,
            ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(dist),
            # rabbitmqctl's own distribution port; by default the system node's CLI range.
            RABBITMQ_CTL_DIST_PORT_MIN=str(ctl),
            RABBITMQ_CTL_DIST_PORT_MAX=str(ctl),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_PID_FILE=str(self.workdir / "rabbitmq.pid"),
        )
        epmd_args = [installed("epmd", "erlang-base"), "-port", str(epmd), "-address", LOOPBACK]
        self.epmd = Daemon("epmd", epmd_args, self.workdir / "epmd.log", env=self.env)
        self.epmd.start(lambda: accepts(epmd), EPMD_START_TIMEOUT)
        self.start()

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/``."""
        return amqp_url_at(self.port)

    def start(self) -> None:
        """Start the node's process (again) on its ports; returns once AMQP handshakes work."""
        log = self.workdir / "rabbitmq.log"
        self.daemon = Daemon("rabbitmq-server", [self.server], log, env=self.env, cwd=self.workdir)
        self.daemon.start(lambda: amqp_answers(self.port), RABBITMQ_START_TIMEOUT)

    def stop(self) -> None:
        """Stop the node's process (SIGTERM: a graceful broker shutdown, ~3 s) and wait."""
        if self.daemon is not None:
            self.daemon.stop()

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: the broker stops, every client connection is closed.

        The Erlang node keeps running, so :meth:`start_app` is a fast restart
        (~1 s, against ~8 s for :meth:`stop` and :meth:`start`). Durable queues
        and their persistent messages survive it.
        """
        self.ctl("stop_app")

    def start_app(self) -> None:
        """``rabbitmqctl start_app``; returns once AMQP handshakes work again."""
        self.ctl("start_app")
        assert self.daemon is not None
        self.daemon.wait_ready(lambda: amqp_answers(self.port), RABBITMQ_START_TIMEOUT)

    def ctl(self, *args: str) -> None:
        """``rabbitmqctl -n <node> args``, bounded; a failure fails the test with its output."""
        command = [self.rabbitmqctl, "-n", self.node, *args]
        try:
            done = subprocess.run(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(command)}` took over {COMMAND_TIMEOUT:.0f}s", pytrace=False)
        with (self.workdir / "rabbitmqctl.log").open("a") as log:
            log.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` failed:\n{done.stdout}{done.stderr}", pytrace=False)

    def ensure_running(self) -> None:
        """Start the node's process, or its broker, if a test left either stopped."""
        if self.daemon is None or not self.daemon.running:
            self.start()
        elif not amqp_answers(self.port):
            self.start_app()

    def close(self) -> None:
        """Stop the node and its epmd."""
        for daemon in (self.daemon, self.epmd):
            if daemon is not None:
                daemon.stop()
