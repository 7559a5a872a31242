"""The file registry's instance records on disk: where they live, reading, writing, sweeping.

One record per instance, ``<dir>/<name>/<id>.json``, both components quoted
into one safe path component. :class:`~quiesce.registry.file.FileRegistry`
decides when to write, touch and delete; this module is how.

- Writes are atomic (a temporary file renamed over the target), so a reader
  never sees half an instance.
- Instance files are 0600; a file owned by another user is never read.
  Every look goes through a checked directory descriptor
  (:func:`~quiesce.registry._safedir.open_folder`).
- The stale sweep deletes only this registry's instance records (a file that
  parses as an instance of that service, under that id's name) and its own
  temporary files (their exact name pattern): never anything else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import stat
import time
from pathlib import Path
from urllib.parse import quote

from quiesce.registry import Instance, parse_instances
from quiesce.registry._safedir import CLOEXEC, NOFOLLOW, open_folder, read_text

__all__ = [
    "ReadCache",
    "collect_stale",
    "live_instances",
    "record_path",
    "service_folder",
    "write_record",
]

logger = logging.getLogger("quiesce.registry")

#: ``{file name: ((inode, mtime_ns, size), text)}``: what a watch read at its last poll.
ReadCache = dict[str, tuple[tuple[int, int, int], str]]

_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"
#: The temporary files :func:`write_record` makes (``.<id>.json.<pid>.<hex8>.tmp``):
#: the only files besides instance records that the stale sweep may delete.
_TMP_NAME = re.compile(r"\.[^/]+\.json\.[0-9]+\.[0-9a-f]{8}\.tmp")


def record_path(directory: Path, name: str, ident: str) -> Path:
    """Where the record of instance ``ident`` of service ``name`` lives under ``directory``."""
    return directory / _component(name) / (_component(ident) + _SUFFIX)


def service_folder(
    directory: Path, name: str, *, create: bool
) -> contextlib.AbstractContextManager[int]:
    """A checked descriptor of service ``name``'s folder (see :func:`open_folder`)."""
    return open_folder(Path(os.path.abspath(directory)), _component(name), create=create)


def live_instances(
    directory: Path, name: str, *, ttl: float, cache: ReadCache, label: str
) -> list[Instance]:
    """Read the live instance files of ``name``; ``cache`` keeps contents between polls.

    ``label`` names the registry in warnings (a file that cannot be read or parsed).

    Raises:
        OSError: the directory is refused (:class:`UnsafeDirectoryError`) or unreadable.

    """
    try:
        with service_folder(directory, name, create=False) as folder:
            texts = _live_texts(folder, ttl, cache, label)
    except FileNotFoundError:
        texts = {}  # nobody registered yet
    for gone in set(cache) - set(texts):
        del cache[gone]
    return parse_instances(texts, label, name)


def _live_texts(folder: int, ttl: float, cache: ReadCache, label: str) -> dict[str, str]:
    """``{file name: text}`` of the fresh instance files in ``folder``."""
    fresh_after = time.time() - ttl
    texts: dict[str, str] = {}
    uid = os.geteuid()
    for entry in list(os.scandir(folder)):
        if entry.name.startswith(".") or not entry.name.endswith(_SUFFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deregistered between the listing and the stat
        # Only regular files of ours (or root's): the folder is ours, but a
        # file may predate a chown, or be a link to somebody else's.
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (uid, 0):
            continue
        if st.st_mtime < fresh_after:
            continue
        # A change of content is always a rename (a new inode and mtime); a
        # heartbeat only moves the mtime, which costs one re-read per ttl/3.
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = cache.get(entry.name)
        if cached is not None and cached[0] == stamp:
            texts[entry.name] = cached[1]
            continue
        try:
            text = read_text(folder, entry.name)
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("%s: cannot read %s: %s", label, entry.name, exc)
            continue
        cache[entry.name] = (stamp, text)
        texts[entry.name] = text
    return texts


def write_record(folder: int, filename: str, text: str) -> None:
    """Write ``text`` to ``filename`` in ``folder`` atomically, mode 0600.

    Raises:
        OSError: it cannot be written (the temporary file is removed again).

    """
    tmp = f".{filename}.{os.getpid()}.{random.getrandbits(32):08x}{_TMP_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
    fd = os.open(tmp, flags, 0o600, dir_fd=folder)
    try:
        with open(fd, "w", encoding="utf-8", closefd=True) as out:
            out.write(text)
        os.replace(tmp, filename, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise


def collect_stale(folder: int, name: str, *, ttl: float) -> None:
    """Delete records of crashed instances of ``name`` and leftover temp files; only those.

    A record is a ``<id>.json`` that parses as an instance of ``name`` with
    that id; a temp file has :func:`write_record`'s exact name pattern.
    """
    # Safe against a slow live owner: its next heartbeat writes its file again.
    limit = time.time() - ttl
    for entry in list(os.scandir(folder)):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime >= limit:
                continue
            if not _TMP_NAME.fullmatch(entry.name) and not _is_record(folder, entry.name, name):
                continue
            # Still the file we judged: not renamed over or touched since.
            again = os.stat(entry.name, dir_fd=folder, follow_symlinks=False)
            if (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns):
                os.unlink(entry.name, dir_fd=folder)


def _is_record(folder: int, filename: str, name: str) -> bool:
    """Whether ``filename`` is this registry's record of an instance of ``name``."""
    try:
        instance = Instance.from_json(read_text(folder, filename))
    except (ValueError, TypeError):
        return False
    return instance.name == name and _component(instance.id) + _SUFFIX == filename


def _component(text: str) -> str:
    """``text`` as one safe path component (no separators, not hidden, not empty)."""
    safe = quote(text, safe="")
    if not safe or safe.startswith("."):
        safe = "%2E" + safe[1:] if safe else "%00"
    return safe
