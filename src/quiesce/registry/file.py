"""The embedded default registry: a directory of instance files with heartbeats.

Layout, mirroring Kratos' etcd keys: ``<dir>/<name>/<id>.json`` holds
:meth:`~quiesce.registry.Instance.to_json` (endpoints in Kratos' form). Every
process on the machine that uses the same directory sees the same instances.

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
  A directory that fails the check is not read by discovery either:
  ``instances()`` raises, a watch lists nothing (and says why, once).

How a record is written (atomically, 0600), read (never another user's) and
swept (only this registry's own files) is :mod:`quiesce.registry.file_records`.

Directory operations are a few microseconds on a local disk, so they run on
the event loop rather than paying a thread hop each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from quiesce.errors import ConfigError
from quiesce.registry import (
    Instance,
    RegistryError,
    Watch,
    positive_seconds,
    query_options,
    redact,
    split_userinfo,
)
from quiesce.registry._safedir import UnsafeDirectoryError
from quiesce.registry.file_records import (
    ReadCache,
    collect_stale,
    live_instances,
    record_path,
    service_folder,
    write_record,
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
        path = record_path(self.directory, instance.name, instance.id)
        try:
            with service_folder(self.directory, instance.name, create=True) as folder:
                collect_stale(folder, instance.name, ttl=self.ttl)
                write_record(folder, path.name, instance.kratos().to_json())
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
        path = record_path(self.directory, instance.name, instance.id)
        try:
            with (
                contextlib.suppress(FileNotFoundError),
                service_folder(self.directory, instance.name, create=False) as folder,
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
        cache: ReadCache = {}
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

    def _scan(self, name: str, cache: ReadCache) -> list[Instance]:
        """The live instances of ``name`` (see :func:`live_instances`).

        Raises:
            OSError: the directory is refused or unreadable.

        """
        return live_instances(self.directory, name, ttl=self.ttl, cache=cache, label=repr(self))

    async def _heartbeat(self, instance: Instance, *, written: bool = True) -> None:
        """Touch the file every ttl/3 for as long as the instance is registered.

        ``written=False`` writes it first, retrying every ttl/3 until that works.
        """
        text = instance.kratos().to_json()
        filename = record_path(self.directory, instance.name, instance.id).name
        failing = False
        while True:
            if written:
                await asyncio.sleep(self.ttl / 3 * random.uniform(0.9, 1.0))
            try:
                # Checked again at every beat (one replaced since is refused), and made
                # again if a cleaner removed it: the file is then written anew below.
                with service_folder(self.directory, instance.name, create=True) as folder:
                    if not written:
                        write_record(folder, filename, text)
                        written = True
                        if failing:
                            logger.warning("%r: registered %s", self, instance.id)
                            failing = False
                        continue
                    try:
                        os.utime(filename, dir_fd=folder, follow_symlinks=False)
                    except FileNotFoundError:
                        write_record(folder, filename, text)
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
