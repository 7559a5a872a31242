"""Fixtures of the CLI tests: ``quiesce`` as a subprocess, and in-process through CliRunner."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner, Result

from quiesce.cli import main

from .proc import Quiesce, Start

HERE = Path(__file__).resolve().parent

#: The in-process target: an ASGI app, factories, and things that are neither.
SVC = """
from quiesce import App
from quiesce.servers.asgi import HTTPServer

async def asgi(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"svc"})

def make():
    return asgi

def grpc_factory():
    raise AssertionError("only a run calls it")

def broken_factory():
    raise RuntimeError("the database is not there")

def needs_args(x):
    return x

def returns_number():
    return 3

def sync_handler(scope, receive, send):
    pass

number = 3

own = App(
    name="own",
    drain_delay=1.5,
    stop_timeout=12.0,
    start_timeout=7.0,
    hook_timeout=2.0,
    grace_period=40.0,
    registry="etcd://127.0.0.1:2380",
    report_file="own.json",
    servers=[HTTPServer(asgi, host="127.0.0.3", port=8124)],
)
two = App(name="two", servers=[HTTPServer(asgi, name="a"), HTTPServer(asgi, name="b", port=8001)])
typo = App(name="typo", drain_dealy=1, servers=[HTTPServer(asgi)])


@own.before_stop
async def flush():
    pass
"""


class Cli:
    """``quiesce run ARGS`` in this process, in a tmp_path holding ``svc.py`` (see :data:`SVC`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.write("svc.py", SVC)

    def write(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = CliRunner().invoke(main, ["run", *args], env=env, prog_name="quiesce")
        # Only an exit: any other exception escaped the CLI (a traceback for a user).
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
        return result


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """A :class:`Cli` with the cwd in tmp_path, no ``QUIESCE_*`` set, sys.path restored after."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("QUIESCE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts --app-dir first
    before = set(sys.modules)
    yield Cli(tmp_path)
    # The targets it imported: the next test's svc.py is another file of the same name.
    # All judged before any is removed: a namespace package's path is read through its parent.
    ours = [name for name in set(sys.modules) - before if _from(sys.modules[name], tmp_path)]
    for name in ours:
        del sys.modules[name]


def _from(module: ModuleType, folder: Path) -> bool:
    files = [getattr(module, "__file__", None) or "", *getattr(module, "__path__", [])]
    return any(str(f).startswith((str(folder), str(HERE))) for f in files)


@pytest.fixture
def quiesce(tmp_path: Path) -> Iterator[Start]:
    """Start ``quiesce`` processes (``quiesce(args, ...)``); any still running are killed after."""
    started: list[Quiesce] = []

    def start(args: list[str], *, cwd: Path = tmp_path, **kwargs: Any) -> Quiesce:
        proc = Quiesce(args, tmp_path / f"proc-{len(started)}", cwd=cwd, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
