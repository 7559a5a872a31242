"""Directories other local users cannot take over, for the file registry.

A registry directory decides who gets traffic (an instance file there is
believed) and what a sweep deletes, so one that another user can write, or
swap for a symlink, is refused rather than used. Every look goes through a
directory descriptor opened with ``O_NOFOLLOW`` and checked after opening (no
window between the check and the use); files inside are opened relative to
it, also without following symlinks.

POSIX only, as the file registry is (its default directory is per uid).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CLOEXEC", "NOFOLLOW", "UnsafeDirectoryError", "open_folder", "read_text"]

#: 0 where the platform lacks the flag (then a symlink is refused by the lstat checks only).
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)


@contextlib.contextmanager
def open_folder(directory: Path, name: str, *, create: bool) -> Iterator[int]:
    """A checked descriptor of ``directory/name`` (``directory`` absolute), closed on exit.

    With ``create``, missing directories are made 0700 (the ancestors too).

    Raises:
        FileNotFoundError: without ``create``, the directory or the folder does not exist.
        UnsafeDirectoryError: an ancestor, the directory or the folder is refused.
        OSError: they cannot be created or opened.

    """
    root = open_root(directory, create=create)
    try:
        folder = open_dir(name, root, directory, create=create)
    finally:
        os.close(root)
    try:
        yield folder
    finally:
        os.close(folder)


class UnsafeDirectoryError(PermissionError):
    """A registry directory another user could write (or reached through a symlink)."""


def open_root(path: Path, *, create: bool) -> int:
    """A checked descriptor of the registry directory ``path`` (absolute).

    Raises:
        UnsafeDirectoryError: an ancestor or the directory itself is refused.
        OSError: it cannot be created or opened.

    """
    parent = path.parent
    if create:
        missing = [p for p in [parent, *parent.parents] if not os.path.lexists(p)]
        for ancestor in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(ancestor, 0o700)
    elif not os.path.lexists(path):
        raise FileNotFoundError(f"{path} does not exist")
    check_ancestors(parent)
    fd = os.open(parent, os.O_RDONLY | DIRECTORY | CLOEXEC)
    try:
        return open_dir(path.name, fd, path.parent, create=create)
    finally:
        os.close(fd)


def open_dir(name: str, parent: int, where: Path, *, create: bool) -> int:
    """Open directory ``name`` in ``parent`` (creating it 0700), refusing an unsafe one.

    Raises:
        UnsafeDirectoryError: a symlink, not ours, or group/world-writable.
        FileNotFoundError: it does not exist (without ``create``).
        OSError: it cannot be created or opened.

    """
    path = where / name
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
    try:
        fd = os.open(name, os.O_RDONLY | DIRECTORY | NOFOLLOW | CLOEXEC, dir_fd=parent)
    except OSError as exc:
        if os.path.islink(path):  # ELOOP (Linux) or ENOTDIR, depending on the platform
            raise UnsafeDirectoryError(f"refusing {path}: it is a symlink") from exc
        raise
    try:
        st = os.fstat(fd)
        reason = None
        if st.st_uid != os.geteuid():
            reason = f"owned by uid {st.st_uid}, not {os.geteuid()}"
        elif st.st_mode & 0o022:
            reason = f"mode {stat.S_IMODE(st.st_mode):o} is writable by other users"
        if reason is not None:
            raise UnsafeDirectoryError(
                f"refusing {path}: {reason} (another user could take the registry over)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_ancestors(path: Path) -> None:
    """Refuse a directory another user could swap: ``path`` and everything above it.

    Each must be owned by root or us, and writable by no one else unless sticky
    (``/tmp``); a symlink on the way must be root's or ours.

    Raises:
        UnsafeDirectoryError: one is not.

    """
    uid = os.geteuid()
    for place in [path, *path.parents]:
        st = os.lstat(place)
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, uid):
            raise UnsafeDirectoryError(f"refusing {place}: a symlink owned by uid {st.st_uid}")
    real = Path(os.path.realpath(path))
    for place in [real, *real.parents]:
        st = os.stat(place)
        if st.st_uid not in (0, uid):
            raise UnsafeDirectoryError(f"refusing {place}: owned by uid {st.st_uid}")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise UnsafeDirectoryError(
                f"refusing {place}: mode {stat.S_IMODE(st.st_mode):o} lets other users "
                "replace what is in it"
            )


def read_text(folder: int, filename: str) -> str:
    """The text of ``filename`` in ``folder``, never through a symlink."""
    # Non-blocking: a FIFO put there instead of a file must not hang the loop.
    fd = os.open(filename, os.O_RDONLY | NOFOLLOW | NONBLOCK | CLOEXEC, dir_fd=folder)
    with open(fd, encoding="utf-8", closefd=True) as source:
        return source.read()
