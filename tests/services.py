"""Real Redis, RabbitMQ and PostgreSQL for the tests: the machine's own, else private ones.

A service that answers on its usual loopback port (Redis 6379, RabbitMQ 5672
guest/guest, PostgreSQL 5432 user postgres database test) is used as it is;
otherwise a private server is started from the Debian package (installed by
:func:`debian.installed` if missing) on free loopback ports, in an owner-only
temporary directory, with every output in a log file there, and stopped when
the ``ExitStack`` given to :func:`redis_url`, :func:`amqp_url` or
:func:`postgres_dsn` closes. A server that does not start fails the test with
the end of its log.

The local services are shared with everyone's tests, run after run: a test
names what it creates with :func:`unique` and deletes it afterwards, or uses a
fixture that does (tests/service_fixtures.py: ``redis_key``, ``amqp_queue``,
``pg_table``). :class:`PrivateRedis` and :class:`PrivateRabbitMQ` are servers
of a test's own that it may stop, kill and start again (a broker outage).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import asyncpg

from daemons import COMMAND_TIMEOUT, LOOPBACK, PROBE_TIMEOUT, Daemon, ask, fail, with_free_ports
from debian import installed
from rabbitmq_node import LOCAL_AMQP_PORT, PrivateRabbitMQ, amqp_answers, amqp_url_at

LOCAL_REDIS_PORT = 6379
LOCAL_POSTGRES_PORT = 5432
T = TypeVar("T")
#: Bounds on a private server accepting clients after it was started.
REDIS_START_TIMEOUT = 10.0
POSTGRES_START_TIMEOUT = 30.0


def redis_url_at(port: int) -> str:
    """``redis://127.0.0.1:<port>/0``."""
    return f"redis://{LOOPBACK}:{port}/0"


def postgres_dsn_at(port: int, database: str = "test") -> str:
    """``postgresql://postgres@127.0.0.1:<port>/<database>``."""
    return f"postgresql://postgres@{LOOPBACK}:{port}/{database}"


def redis_program() -> str:
    """redis-server's path (Debian's redis-server installed if missing)."""
    return installed("redis-server", "redis-server")


def postgres_programs() -> tuple[str, str]:
    """The paths of initdb and postgres (Debian's postgresql installed if missing)."""
    return installed("initdb", "postgresql"), installed("postgres", "postgresql")


def unique(prefix: str) -> str:
    """``prefix`` and a short random suffix: a stream, queue or table name no other test uses.

    The suffix is lowercase hex after an underscore, so ``unique("ids")`` is a
    valid unquoted SQL identifier too.
    """
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def redis_answers(port: int = LOCAL_REDIS_PORT, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a Redis on loopback ``port`` answers PING with PONG (not LOADING) in ``timeout``."""
    return ask(port, b"*1\r\n$4\r\nPING\r\n", 7, timeout) == b"+PONG\r\n"


def postgres_answers(dsn: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether asyncpg connects to ``dsn`` (its database exists) within ``timeout``."""

    async def connect() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        await conn.close(timeout=timeout)
        return True

    try:
        return _run(connect(), 2 * timeout + PROBE_TIMEOUT)
    except TimeoutError:
        return False


class Names:
    """Names of a test's own, made by calling it with a prefix (:func:`unique`).

    A fixture deletes what they name after the test; :meth:`track` adds names
    the code under test made itself.
    """

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, prefix: str) -> str:
        name = unique(prefix)
        self.made.append(name)
        return name

    def track(self, *names: str) -> None:
        """Delete these too after the test."""
        self.made.extend(names)


class PrivateRedis:
    """A redis-server of a test's own on a free loopback port, in ``workdir``.

    With ``persistent`` (the default) every write is in its append-only file
    before it is acknowledged (``appendfsync always``): a :meth:`stop`, or even
    a :meth:`kill`, then :meth:`start` on the same port finds every key again.
    """

    def __init__(self, workdir: Path, *, persistent: bool = True) -> None:
        self.workdir = workdir
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.binary = redis_program()
        self.persistent = persistent
        self.port = 0
        self.daemon: Daemon | None = None

        def start_on(ports: list[int]) -> None:
            self.port = ports[0]
            self.start()

        with_free_ports(1, start_on)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return redis_url_at(self.port)

    def start(self) -> None:
        """Start it (again) on its port, with the data it had; returns once it answers PING."""
        aof = ["yes", "--appendfsync", "always"] if self.persistent else ["no"]
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self.workdir),
        ]
        args += ["--save", "", "--daemonize", "no", "--logfile", "", "--appendonly", *aof]
        self.daemon = Daemon("redis-server", args, self.workdir / "redis.log")
        self.daemon.start(lambda: redis_answers(self.port), REDIS_START_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM (Redis's graceful shutdown) and wait for the exit; clients are disconnected."""
        if self.daemon is not None:
            self.daemon.stop()

    def kill(self) -> None:
        """SIGKILL: Redis dies at once, a crash."""
        if self.daemon is not None:
            self.daemon.kill()


class PrivatePostgres:
    """A PostgreSQL cluster of its own (trust auth, database ``test``) on a free loopback port.

    postgres refuses to run as root, so initdb and the server run as the
    ``postgres`` user, with the data and the socket in a directory of that
    user's (``workdir`` may be root's); the log is in ``workdir``.
    """

    def __init__(self, workdir: Path) -> None:
        self.initdb, self.postgres = postgres_programs()
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log = workdir / "postgres.log"
        self.root = Path(tempfile.mkdtemp(prefix="quiesce-pg-"))
        self.data = str(self.root / "data")
        self.env = dict(os.environ, HOME=str(self.root), LC_ALL="C")
        self.daemon: Daemon | None = None
        self.port = 0
        try:
            shutil.chown(self.root, "postgres", "postgres")
            self._initdb()
            with_free_ports(1, self._start)
        except BaseException:
            self.close()
            raise

    def _initdb(self) -> None:
        args = [self.initdb, "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        args.append("--no-sync")
        try:
            with self.log.open("ab") as out:
                code = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.root,
                    user="postgres",
                    group="postgres",
                    extra_groups=[],
                    timeout=COMMAND_TIMEOUT,
                    check=False,
                ).returncode
        except subprocess.TimeoutExpired:
            fail("initdb", f"took over {COMMAND_TIMEOUT:.0f}s", self.log)
        if code != 0:
            fail("initdb", f"exited with code {code}", self.log)

    def _start(self, ports: list[int]) -> None:
        self.port = ports[0]
        server = [self.postgres, "-D", self.data, "-p", str(self.port), "-k", str(self.root)]
        # Durability is not under test here: without fsync the cluster starts and writes faster.
        server += ["-h", LOOPBACK, "-c", "fsync=off", "-c", "synchronous_commit=off"]
        self.daemon = Daemon(
            "postgres",
            server,
            self.log,
            env=self.env,
            user="postgres",
            cwd=self.root,
            stop_signal=signal.SIGINT,
        )
        admin = postgres_dsn_at(self.port, "postgres")
        self.daemon.start(lambda: postgres_answers(admin), POSTGRES_START_TIMEOUT)
        _run(_execute(admin, "CREATE DATABASE test"), COMMAND_TIMEOUT)

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/test``."""
        return postgres_dsn_at(self.port)

    def close(self) -> None:
        """Stop the server (a fast shutdown: clients are disconnected) and delete its data."""
        if self.daemon is not None:
            self.daemon.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _run(coro: Coroutine[object, object, T], timeout: float) -> T:
    """Run ``coro`` in a thread with an event loop of its own, bounded.

    The caller may be a fixture set up while pytest-asyncio holds a loop, or
    code inside a running loop: neither is touched.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="services")
    try:
        return pool.submit(asyncio.run, coro).result(timeout)
    finally:
        pool.shutdown(wait=False)  # after a timeout, the thread ends with its coroutine's bounds


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT * 10)
    try:
        await conn.execute(sql, timeout=COMMAND_TIMEOUT)
    finally:
        await conn.close(timeout=PROBE_TIMEOUT * 10)


def redis_url(stack: ExitStack, workdir: Path, *, local_port: int = LOCAL_REDIS_PORT) -> str:
    """The local Redis's URL if it answers on ``local_port``, else a private one's.

    The private server (in ``workdir``, no persistence) stops when ``stack`` closes.
    """
    if redis_answers(local_port):
        return redis_url_at(local_port)
    server = PrivateRedis(workdir, persistent=False)
    stack.callback(server.stop)
    return server.url


def amqp_url(stack: ExitStack, workdir: Path, *, local_port: int = LOCAL_AMQP_PORT) -> str:
    """The local RabbitMQ's URL (guest/guest) if it answers on ``local_port``, else a private one's.

    The private node (in ``workdir``) stops when ``stack`` closes.
    """
    if amqp_answers(local_port):
        return amqp_url_at(local_port)
    node = PrivateRabbitMQ(workdir)
    stack.callback(node.close)
    return node.url


def postgres_dsn(stack: ExitStack, workdir: Path, *, local_port: int = LOCAL_POSTGRES_PORT) -> str:
    """The local PostgreSQL's DSN (user postgres, db test) if it connects, else a private one's.

    The private cluster (its log in ``workdir``) is stopped and deleted when ``stack`` closes.
    """
    if postgres_answers(postgres_dsn_at(local_port)):
        return postgres_dsn_at(local_port)
    cluster = PrivatePostgres(workdir)
    stack.callback(cluster.close)
    return cluster.dsn
