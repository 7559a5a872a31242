"""Programs the tests need, found on this machine or installed from Debian with apt-get.

The tests run real servers (etcd, redis-server, rabbitmq-server, postgres). A
machine without one gets its Debian package installed once per session, as
root, non-interactively; a failed install fails the test that needed it with
the end of apt's output, instead of skipping it.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import threading
import time
from collections.abc import Sequence

import pytest

#: Bound on one apt-get run (a fresh CI machine downloads the package and its dependencies).
INSTALL_TIMEOUT = 600.0

#: Where Debian puts programs that may not be on PATH: daemons in /usr/sbin, PostgreSQL's
#: server programs under their major version (the newest version is taken).
SYSTEM_DIRS = ("/usr/sbin", "/usr/lib/postgresql/*/bin")

_lock = threading.Lock()
#: Package -> None once installed (or found), or the message of its failed install: apt-get runs
#: at most once per package and session, and a second test needing it fails at once.
_installs: dict[str, str | None] = {}
_updated = False


def installed(
    binary: str, package: str, *, also: Sequence[str] = (), where: Sequence[str] = ()
) -> str:
    """The path of ``binary``, installing Debian's ``package`` (and ``also``) when it is missing.

    ``binary`` is looked for in ``where`` (directories, glob patterns allowed),
    then on PATH, then in :data:`SYSTEM_DIRS`. Thread-safe: concurrent callers
    wait for one apt-get.

    Raises:
        pytest.fail.Exception: apt-get failed or timed out (the message ends with its
            output), or the package installed but has no ``binary``.
    """
    with _lock:
        found = _find(binary, where)
        if found is not None:
            return found
        if package not in _installs:
            _installs[package] = _install([package, *also])
        error = _installs[package]
        if error is not None:
            pytest.fail(f"{binary} is not installed and {error}", pytrace=False)
        found = _find(binary, where)
        if found is None:
            pytest.fail(f"Debian package {package} is installed but has no {binary}", pytrace=False)
        return found


def _find(binary: str, where: Sequence[str]) -> str | None:
    for folder in _candidates(where):
        path = os.path.join(folder, binary)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _candidates(where: Sequence[str]) -> list[str]:
    folders: list[str] = []
    for pattern in [*where, *os.environ.get("PATH", "").split(os.pathsep), *SYSTEM_DIRS]:
        matches = sorted(glob.glob(pattern), key=_version_order, reverse=True)
        folders += [m for m in matches if m not in folders]
    return folders


def _version_order(path: str) -> list[tuple[int, str]]:
    # Numbers compare as numbers: postgresql/15 comes before postgresql/9.6 (newest first).
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", path)]


def _install(packages: list[str]) -> str | None:
    """None once ``packages`` are installed, else what went wrong (with apt's output)."""
    global _updated
    deadline = time.monotonic() + INSTALL_TIMEOUT
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    error = _apt(install, deadline)
    if error is not None and not _updated:
        # A fresh machine (a CI image) may have no package lists yet, or stale ones.
        _updated = True
        error = _apt(["apt-get", "update", "-q"], deadline) or _apt(install, deadline)
    return error


def _apt(args: list[str], deadline: float) -> str | None:
    """None when ``args`` succeeded before ``deadline``, else why not (with its output's end)."""
    command = " ".join(args)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        done = subprocess.run(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=max(deadline - time.monotonic(), 1.0),
        )
    except subprocess.TimeoutExpired as exc:
        # On a timeout the output so far comes as bytes, even with text=True.
        out: bytes | str | None = exc.output
        tail = out.decode(errors="replace") if isinstance(out, bytes) else out or ""
        return f"`{command}` did not finish in {INSTALL_TIMEOUT:.0f}s:\n{tail[-3000:]}"
    except OSError as exc:
        return f"`{command}` could not run: {exc}"
    if done.returncode != 0:
        return f"`{command}` failed (exit {done.returncode}):\n{done.stdout[-3000:]}"
    return None
