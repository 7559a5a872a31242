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


class FileRegistry:
    """Instances as files in ``directory``, kept fresh by a heartbeat; implements both protocols.

    Args:
        directory: the shared directory (created on first use); default :data:`DEFAULT_DIR`.
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
            ConfigError: a host other than localhost, or a bad option.

        """
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"registry {url!r}: a file registry is local (file:///dir)")
        options = query_options(url, ("ttl", "poll"))
        path = unquote(parts.path)
        return cls(
            path or None,
            ttl=positive_seconds(url, options, "ttl", 10.0),
            poll_interval=positive_seconds(url, options, "poll", DEFAULT_POLL),
        )

    def __repr__(self) -> str:
        return f"FileRegistry({str(self.directory)!r}, ttl={self.ttl:g})"

    # -- Registry ------------------------------------------------------------------

    async def register(self, instance: Instance) -> None:
        """Write the instance file and keep it fresh until :meth:`deregister`.

        Raises:
            RegistryError: the file cannot be written (permissions, full disk).

        """
        key = (instance.name, instance.id)
        path = self._path(instance.name, instance.id)
        try:
            self._collect_stale(path.parent)
            self._write(path, instance.kratos().to_json())
        except OSError as exc:
            raise RegistryError(f"{self!r}: cannot write {path}: {exc}") from exc
        old = self._heartbeats.pop(key, None)
        if old is not None:
            old.cancel()
        self._heartbeats[key] = asyncio.create_task(
            self._heartbeat(path, instance), name=f"quiesce registry heartbeat {instance.id}"
        )

    def keep_registered(self, instance: Instance) -> None:
        """Register ``instance`` in the background, retrying until it works, then keep it fresh.

        For a service that should serve even when the registry cannot be
        written (``registry_required=False``): never raises for write errors,
        logs them. Call it from the running event loop; :meth:`deregister` ends it.
        """
        key = (instance.name, instance.id)
        old = self._heartbeats.pop(key, None)
        if old is not None:
            old.cancel()
        self._heartbeats[key] = asyncio.create_task(
            self._heartbeat(self._path(instance.name, instance.id), instance, written=False),
            name=f"quiesce registry heartbeat {instance.id}",
        )

    async def deregister(self, instance: Instance) -> None:
        """Stop the heartbeat and delete the file; watchers see it gone at their next poll.

        Raises:
            RegistryError: the file exists but cannot be deleted.

        """
        task = self._heartbeats.pop((instance.name, instance.id), None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        path = self._path(instance.name, instance.id)
        try:
            path.unlink(missing_ok=True)
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
        """The instances of ``name`` whose heartbeat is younger than ``ttl``, sorted by id."""
        return self._scan(name, {})

    def watch(self, name: str) -> Watch:
        """Poll the service's directory every ``poll_interval``; yield the list when it changes."""
        return Watch(self._poll(name))

    async def _poll(self, name: str) -> AsyncGenerator[list[Instance], None]:
        cache: dict[str, tuple[tuple[int, int, int], str]] = {}
        last: list[Instance] | None = None
        while True:
            current = self._scan(name, cache)
            if current != last:
                last = current
                yield current
            await asyncio.sleep(self.poll_interval)

    # -- files -----------------------------------------------------------------------

    def _path(self, name: str, ident: str) -> Path:
        return self.directory / _component(name) / (_component(ident) + _SUFFIX)

    def _scan(
        self, name: str, cache: dict[str, tuple[tuple[int, int, int], str]]
    ) -> list[Instance]:
        """Read the live instance files of ``name``; ``cache`` keeps contents between polls."""
        folder = self.directory / _component(name)
        fresh_after = time.time() - self.ttl
        texts: dict[str, str] = {}
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            logger.warning("%r: cannot list %s: %s", self, folder, exc)
            entries = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(_SUFFIX):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deregistered between the listing and the stat
            if st.st_mtime < fresh_after:
                continue
            # A change of content is always a rename (a new inode and mtime); a
            # heartbeat only moves the mtime, which costs one re-read per ttl/3.
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = cache.get(entry.name)
            if cached is not None and cached[0] == stamp:
                texts[entry.path] = cached[1]
                continue
            try:
                text = Path(entry.path).read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as exc:
                logger.warning("%r: cannot read %s: %s", self, entry.path, exc)
                continue
            cache[entry.name] = (stamp, text)
            texts[entry.path] = text
        live = {os.path.basename(p) for p in texts}
        for gone in set(cache) - live:
            del cache[gone]
        return parse_instances(texts, repr(self))

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(
            f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}{_TMP_SUFFIX}"
        )
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _collect_stale(self, folder: Path) -> None:
        """Delete files of crashed instances (and their leftover temp files)."""
        # Safe against a slow live owner: its next heartbeat writes its file again.
        limit = time.time() - self.ttl
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < limit:
                        os.unlink(entry.path)

    async def _heartbeat(self, path: Path, instance: Instance, *, written: bool = True) -> None:
        """Touch the file every ttl/3 for as long as the instance is registered.

        ``written=False`` writes it first, retrying every ttl/3 until that works.
        """
        text = instance.kratos().to_json()
        failing = False
        while True:
            if written:
                await asyncio.sleep(self.ttl / 3 * random.uniform(0.9, 1.0))
            try:
                if not written:
                    self._write(path, text)
                    written = True
                    if failing:
                        logger.warning("%r: registered %s", self, instance.id)
                        failing = False
                    continue
                try:
                    os.utime(path)
                except FileNotFoundError:
                    self._write(path, text)
                    logger.warning("%r: %s had been deleted; wrote it again", self, path)
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


def _component(text: str) -> str:
    """``text`` as one safe path component (no separators, not hidden, not empty)."""
    safe = quote(text, safe="")
    if not safe or safe.startswith("."):
        safe = "%2E" + safe[1:] if safe else "%00"
    return safe
