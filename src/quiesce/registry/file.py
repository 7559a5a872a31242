"""The embedded default registry: a directory of instance files with heartbeats.

Layout, mirroring Kratos' etcd keys: ``<dir>/<name>/<id>.json`` holds
:meth:`~quiesce.registry.Instance.to_json` (endpoints in Kratos' form). Every
process on the machine that uses the same directory sees the same instances.

- Writes are atomic (a temporary file renamed over the target), so a reader
  never sees half an instance.
- The owner touches its file every ``ttl / 3``; a file untouched for ``ttl``
  is stale and no longer listed (a SIGKILLed process drops out after ``ttl``).
  A file deleted under a live owner is written again at the next heartbeat.
- Deregistering deletes the file; watchers poll every ``poll_interval``.
- Whoever can write the directory can announce instances that take this
  user's traffic, or make a sweep delete what it points at. So the directory
  and each service's folder are created 0700 and refused (``RegistryError``
  naming the path and why) when they are not owned by this user, are
  group- or world-writable, or are a symlink; their ancestors must be owned by
  root or this user and be writable by nobody else unless sticky (``/tmp``).
  Every look goes through a directory descriptor opened with ``O_NOFOLLOW``
  and checked, so a directory swapped after the check is not followed either.
  Instance files are 0600; a file owned by another user is never read. A
  directory that fails the check is not read by discovery either:
  ``instances()`` raises, a watch lists nothing (and says why, once).
- The stale sweep deletes only this registry's instance records (a file that
  parses as an instance of that service, under that id's name) and its own
  temporary files (their exact name pattern): never anything else.

Directory operations are a few microseconds on a local disk, so they run on
the event loop rather than paying a thread hop each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import stat
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from quiesce.errors import ConfigError
from quiesce.registry import (
    Instance,
    RegistryError,
    Watch,
    parse_instances,
    positive_seconds,
    query_options,
    redact,
    split_userinfo,
)
from quiesce.registry._safedir import (
    CLOEXEC,
    NOFOLLOW,
    UnsafeDirectoryError,
    open_folder,
    read_text,
)

__all__ = ["DEFAULT_DIR", "FileRegistry"]

logger = logging.getLogger("quiesce.registry")
#: Seconds between two looks at a service's directory while watching: one scandir and a
#: stat per instance, cheap enough to keep deregistration -> notice well under 50 ms.
DEFAULT_POLL = 0.025

#: Where ``file:`` keeps instances: shared by every process of the same user on the
#: machine. Per user, because another user's directory is not writable (and one everybody
#: can write would let any local user announce instances that take others' traffic).
DEFAULT_DIR = Path(tempfile.gettempdir()) / f"quiesce-registry-{os.getuid()}"
_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"
#: The temporary files :meth:`FileRegistry._write` makes (``.<id>.json.<pid>.<hex8>.tmp``):
#: the only files besides instance records that the stale sweep may delete.
_TMP_NAME = re.compile(r"\.[^/]+\.json\.[0-9]+\.[0-9a-f]{8}\.tmp")


class FileRegistry:
    """Instances as files in ``directory``, kept fresh by a heartbeat; implements both protocols.

    Args:
        directory: the shared directory (created 0700 on first use); default
            :data:`DEFAULT_DIR`. See the module's notes for what is refused.
        ttl: seconds after the last heartbeat that an instance counts as gone;
            the heartbeat runs every ``ttl / 3``. Every process sharing the
            directory should use the same ttl.
        poll_interval: seconds between two looks at the directory while watching.

    Raises:
        ConfigError: ``ttl`` or ``poll_interval`` is not positive.

    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        ttl: float = 10.0,
        poll_interval: float = DEFAULT_POLL,
    ) -> None:
        if not ttl > 0 or not poll_interval > 0:
            raise ConfigError(
                f"file registry: ttl={ttl!r} and poll_interval={poll_interval!r} must be positive"
            )
        self.directory = Path(directory) if directory is not None else DEFAULT_DIR
        self.ttl = float(ttl)
        self.poll_interval = float(poll_interval)
        self._heartbeats: dict[tuple[str, str], asyncio.Task[None]] = {}

    @classmethod
    def from_url(cls, url: str) -> FileRegistry:
        """``file:`` (default directory) or ``file:///dir``, with ``?ttl=10&poll=0.025``.

        Raises:
            ConfigError: a host other than localhost, a user or password, or a bad option.

        """
        safe = redact(url)
        userinfo, bare = split_userinfo(url)
        if userinfo is not None:
            raise ConfigError(
                f"registry {safe!r}: a file registry takes no user or password "
                "(an '@' in its path is written %40)"
            )
        try:
            parts = urlsplit(bare)
        except ValueError as exc:
            raise ConfigError(f"registry {safe!r}: not a valid URL ({exc})") from None
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"registry {safe!r}: a file registry is local (file:///dir)")
        options = query_options(url, ("ttl", "poll"))
        path = unquote(parts.path)
        return cls(
            path or None,
            ttl=positive_seconds(url, options, "ttl", 10.0),
            poll_interval=positive_seconds(url, options, "poll", DEFAULT_POLL),
        )

    def __repr__(self) -> str:
        return f"FileRegistry({str(self.directory)!r}, ttl={self.ttl:g})"

    def check_name(self, name: str) -> None:
        """Any string is a safe service name here: it is quoted into one path component.

        Raises:
            ConfigError: ``name`` is not a string.

        """
        if not isinstance(name, str):
            raise ConfigError(f"{self!r}: a service name is a string, not {type(name).__name__}")

    # -- Registry ------------------------------------------------------------------

    async def register(self, instance: Instance) -> None:
        """Write the instance file and keep it fresh until :meth:`deregister`.

        Raises:
            RegistryError: the directory is refused (see the module's notes) or the
                file cannot be written (permissions, full disk).

        """
        self.check_name(instance.name)
        key = (instance.name, instance.id)
        path = self._path(instance.name, instance.id)
        try:
            with self._folder(instance.name, create=True) as folder:
                self._collect_stale(folder, instance.name)
                self._write(folder, path.name, instance.kratos().to_json())
        except UnsafeDirectoryError as exc:
            raise RegistryError(str(exc)) from exc  # it names the path and the reason
        except OSError as exc:
            raise RegistryError(f"{self!r}: cannot write {path}: {exc}") from exc
        old = self._heartbeats.pop(key, None)
        if old is not None:
            old.cancel()
        self._heartbeats[key] = asyncio.create_task(
            self._heartbeat(instance), name=f"quiesce registry heartbeat {instance.id}"
        )

    def keep_registered(self, instance: Instance) -> None:
        """Register ``instance`` in the background, retrying until it works, then keep it fresh.

        For a service that should serve even when the registry cannot be
        written (``registry_required=False``): never raises for write errors
        (nor for a refused directory), logs them. Call it from the running
        event loop; :meth:`deregister` ends it.
        """
        key = (instance.name, instance.id)
        old = self._heartbeats.pop(key, None)
        if old is not None:
            old.cancel()
        self._heartbeats[key] = asyncio.create_task(
            self._heartbeat(instance, written=False),
            name=f"quiesce registry heartbeat {instance.id}",
        )

    async def deregister(self, instance: Instance) -> None:
        """Stop the heartbeat and delete the file; watchers see it gone at their next poll.

        Raises:
            RegistryError: the file exists but cannot be deleted, or the directory
                was refused after this registry wrote the file (nothing in it is
                touched; the file may still be listed until it goes stale).

        """
        task = self._heartbeats.pop((instance.name, instance.id), None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        path = self._path(instance.name, instance.id)
        try:
            with (
                contextlib.suppress(FileNotFoundError),
                self._folder(instance.name, create=False) as folder,
            ):
                os.unlink(path.name, dir_fd=folder)
        except UnsafeDirectoryError as exc:
            if task is None:
                # Never registered here (the App deregisters after a refused register
                # too): nothing of ours is in it, and nothing in it is touched.
                logger.debug("%r: not deregistering %s: %s", self, instance.id, exc)
                return
            raise RegistryError(f"{self!r}: {instance.id} may still be listed: {exc}") from exc
        except OSError as exc:
            raise RegistryError(f"{self!r}: cannot delete {path}: {exc}") from exc

    async def aclose(self) -> None:
        """Stop every heartbeat without deleting files (they go stale after ``ttl``)."""
        tasks = list(self._heartbeats.values())
        self._heartbeats.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- Discovery -----------------------------------------------------------------

    async def instances(self, name: str) -> list[Instance]:
        """The instances of ``name`` whose heartbeat is younger than ``ttl``, sorted by id.

        Raises:
            RegistryError: the directory is refused (another user could have written it)
                or cannot be read.

        """
        try:
            return self._scan(name, {})
        except OSError as exc:
            raise RegistryError(f"{self!r}: cannot list {name!r}: {exc}") from exc

    def watch(self, name: str) -> Watch:
        """Poll the service's directory every ``poll_interval``; yield the list when it changes.

        While the directory is refused or unreadable the list is empty (an
        attacker's instance is never yielded); the reason is logged once.
        """
        return Watch(self._poll(name))

    async def _poll(self, name: str) -> AsyncGenerator[list[Instance], None]:
        cache: dict[str, tuple[tuple[int, int, int], str]] = {}
        last: list[Instance] | None = None
        failing: str | None = None
        while True:
            try:
                current = self._scan(name, cache)
                if failing is not None:
                    logger.warning("%r: watch of %r works again", self, name)
                    failing = None
            except OSError as exc:
                if str(exc) != failing:
                    logger.warning("%r: watch of %r lists nothing: %s", self, name, exc)
                    failing = str(exc)
                cache.clear()
                current = []
            if current != last:
                last = current
                yield current
            await asyncio.sleep(self.poll_interval)

    # -- files -----------------------------------------------------------------------

    def _path(self, name: str, ident: str) -> Path:
        return self.directory / _component(name) / (_component(ident) + _SUFFIX)

    def _folder(self, name: str, *, create: bool) -> contextlib.AbstractContextManager[int]:
        """A checked descriptor of service ``name``'s folder (see :func:`open_folder`)."""
        return open_folder(Path(os.path.abspath(self.directory)), _component(name), create=create)

    def _scan(
        self, name: str, cache: dict[str, tuple[tuple[int, int, int], str]]
    ) -> list[Instance]:
        """Read the live instance files of ``name``; ``cache`` keeps contents between polls.

        Raises:
            OSError: the directory is refused (:class:`UnsafeDirectoryError`) or unreadable.

        """
        try:
            with self._folder(name, create=False) as folder:
                texts = self._live_texts(folder, cache)
        except FileNotFoundError:
            texts = {}  # nobody registered yet
        for gone in set(cache) - set(texts):
            del cache[gone]
        return parse_instances(texts, repr(self), name)

    def _live_texts(
        self, folder: int, cache: dict[str, tuple[tuple[int, int, int], str]]
    ) -> dict[str, str]:
        """``{file name: text}`` of the fresh instance files in ``folder``."""
        fresh_after = time.time() - self.ttl
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
                logger.warning("%r: cannot read %s: %s", self, entry.name, exc)
                continue
            cache[entry.name] = (stamp, text)
            texts[entry.name] = text
        return texts

    def _write(self, folder: int, filename: str, text: str) -> None:
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

    def _collect_stale(self, folder: int, name: str) -> None:
        """Delete records of crashed instances of ``name`` and leftover temp files; only those.

        A record is a ``<id>.json`` that parses as an instance of ``name`` with
        that id; a temp file has :func:`_write`'s exact name pattern.
        """
        # Safe against a slow live owner: its next heartbeat writes its file again.
        limit = time.time() - self.ttl
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

    async def _heartbeat(self, instance: Instance, *, written: bool = True) -> None:
        """Touch the file every ttl/3 for as long as the instance is registered.

        ``written=False`` writes it first, retrying every ttl/3 until that works.
        """
        text = instance.kratos().to_json()
        filename = self._path(instance.name, instance.id).name
        failing = False
        while True:
            if written:
                await asyncio.sleep(self.ttl / 3 * random.uniform(0.9, 1.0))
            try:
                # Checked again at every beat (one replaced since is refused), and made
                # again if a cleaner removed it: the file is then written anew below.
                with self._folder(instance.name, create=True) as folder:
                    if not written:
                        self._write(folder, filename, text)
                        written = True
                        if failing:
                            logger.warning("%r: registered %s", self, instance.id)
                            failing = False
                        continue
                    try:
                        os.utime(filename, dir_fd=folder, follow_symlinks=False)
                    except FileNotFoundError:
                        self._write(folder, filename, text)
                        logger.warning("%r: %s had been deleted; wrote it again", self, filename)
            except OSError as exc:
                if not failing:
                    logger.error("%r: heartbeat of %s failing: %s", self, instance.id, exc)
                failing = True
                if not written:
                    await asyncio.sleep(self.ttl / 3 * random.uniform(0.9, 1.0))
                continue
            if failing:
                logger.warning("%r: heartbeat of %s works again", self, instance.id)
                failing = False


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
