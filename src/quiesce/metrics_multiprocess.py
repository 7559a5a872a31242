"""One scrape for a pool of workers: prometheus-client's multiprocess mode, dead workers folded in.

Under a supervisor every worker writes its metrics to files of its own in one
directory (``PROMETHEUS_MULTIPROC_DIR``: ``counter_<pid>.db``, ``gauge_livesum_<pid>.db``...),
and a scrape of any worker reads them all (:class:`DirectoryCollector`). The
supervisor owns the directory:

- :func:`prepare_dir` before the first worker starts: made 0700, refused when
  another user could write it, emptied of an earlier run's files;
- :func:`fold_dead` as each worker exits: its live gauges are dropped
  (prometheus-client's ``mark_process_dead``) and its counters, histograms,
  summaries and non-live gauges are added into one ``<kind>_folded.db`` per
  kind, so that totals survive worker churn and the directory holds a bounded
  number of files (prometheus-client #367: thousands of dead workers' files
  made one scrape take 40 s).

Folding against a concurrent scrape: a reader must never count a dead worker
twice (its own file and the folded one) nor miss it. One ``rename`` is the only
atomic step, so the folded file records which workers it already holds, and a
reader skips their files: the fold writes the new folded file under a temporary
name, renames it into place (the commit: from then on readers skip the dead
worker's file), removes the dead worker's file, then commits the folded file
once more without the record (so that a later process with the same pid counts).
A reader checks at the end that every folded file it read is still the one in
place (it holds it open, so its inode cannot be reused); if a fold committed
meanwhile it reads again. A fold stopped halfway (the supervisor killed) leaves
a record that keeps the totals exact, and the next fold finishes it.

POSIX only, as the directory checks are.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import mmap_dict, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from quiesce.registry._safedir import CLOEXEC, NOFOLLOW, UnsafeDirectoryError, open_root

__all__ = ["ENV", "DirectoryCollector", "UnsafeDirectoryError", "fold_dead", "prepare_dir"]

# prometheus-client's file layer is untyped: reached through these two names only.
_files: Any = mmap_dict
_multiprocess: Any = multiprocess

#: The variable that turns prometheus-client's multiprocess mode on (read at its import).
ENV = "PROMETHEUS_MULTIPROC_DIR"

#: One (value, timestamp) of a metric file.
Entry = tuple[float, float]


def _add(old: Entry, new: Entry) -> Entry:
    return old[0] + new[0], max(old[1], new[1])


def _lower(old: Entry, new: Entry) -> Entry:
    return old if old[0] <= new[0] else new


def _higher(old: Entry, new: Entry) -> Entry:
    return old if old[0] >= new[0] else new


def _latest(old: Entry, new: Entry) -> Entry:
    return new if new[1] >= old[1] else old


#: How a dead worker's file joins the folded one, by file prefix. Histogram files hold
#: each bucket's own count (cumulated at read), so adding them key by key is exact.
_FOLDS: dict[str, Callable[[Entry, Entry], Entry]] = {
    "counter": _add,
    "summary": _add,
    "histogram": _add,
    "gauge_sum": _add,
    "gauge_min": _lower,
    "gauge_max": _higher,
    "gauge_mostrecent": _latest,
}
#: Gauges of mode "all" keep one series per pid, dead ones too: kept, they would grow the
#: directory with every restart, so a dead worker's are dropped as "liveall" ones are.
_DROPPED = ("gauge_all",)

_FOLDED = "folded"
#: The key a folded file records a worker it holds under, until that worker's file is gone.
_MARKER = "quiesce_multiprocess_folded"
_MARKER_START = json.dumps([_MARKER])[:-1]

#: What prometheus-client and this module write in the directory (prepare_dir removes them).
_OURS = re.compile(r"(counter|summary|histogram|gauge_[a-z]+)_(\d+|folded)\.(db|tmp)")

#: One fold at a time in this process (one supervisor owns a directory).
_FOLDING = threading.Lock()


def prepare_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` ready for a new pool's metrics, and return it (absolute).

    A missing directory is created 0700 (its missing ancestors too); an existing
    one must be ours, a directory (not a symlink) and writable by no other user,
    and so must be every directory above it (a sticky one such as ``/tmp``
    aside). The metric files of an earlier run are removed, nothing else.

    Raises:
        UnsafeDirectoryError: the directory or one above it is refused.
        OSError: it cannot be created, opened or cleared.

    """
    directory = Path(os.path.abspath(path))
    fd = open_root(directory, create=True)
    try:
        for name in os.listdir(fd):
            if _OURS.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    return directory


def fold_dead(path: str | os.PathLike[str], pid: int, *, timeout: float = 5.0) -> None:
    """Fold the files of worker ``pid``, which has exited, into the directory's folded files.

    Call it as soon as the worker is reaped and before starting another process
    (the pid may be reused: a later worker with the same pid must not be folded
    in its place). Live gauges of the worker are dropped; its counters,
    histograms, summaries and "sum", "min", "max" and "mostrecent" gauges join
    the folded files, so that every total stays what it was; its "all" gauges
    are dropped. A scrape meanwhile sees the totals before or after, never a
    mix (see the module's docstring).

    Raises:
        ValueError: ``pid`` is not positive.
        TimeoutError: another fold of this process held on for ``timeout`` seconds.
        OSError: a file cannot be read, written or removed (the totals stay exact:
            the next fold finishes this one).
        RuntimeError: a file is corrupt (prometheus-client's own reads fail on it too).

    """
    if pid <= 0:
        raise ValueError(f"pid must be a positive int, not {pid!r}")
    directory = Path(path)
    if not _FOLDING.acquire(timeout=timeout):
        raise TimeoutError(f"another fold of {directory} held on for {timeout}s")
    try:
        _multiprocess.mark_process_dead(pid, str(directory))
        for prefix, join in _FOLDS.items():
            _fold(directory, prefix, str(pid), join)
        for prefix in _DROPPED:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / f"{prefix}_{pid}.db")
    finally:
        _FOLDING.release()


def _fold(directory: Path, prefix: str, pid: str, join: Callable[[Entry, Entry], Entry]) -> None:
    folded = directory / f"{prefix}_{_FOLDED}.db"
    values, held = _read_folded(folded)
    try:
        dead = _entries(directory / f"{prefix}_{pid}.db")
    except FileNotFoundError:
        if not held:
            return
        dead = []  # nothing of this worker, but an earlier fold stopped halfway: finish it
    else:
        held.add(pid)
    for key, entry in dead:
        values[key] = join(values[key], entry) if key in values else entry
    _commit(folded, values, held)  # from here on, readers skip the held workers' files
    for each in held:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / f"{prefix}_{each}.db")
    _commit(folded, values, set())  # gone: a later process with one of their pids counts


def _read_folded(folded: Path) -> tuple[dict[str, Entry], set[str]]:
    values: dict[str, Entry] = {}
    held: set[str] = set()
    try:
        entries = _entries(folded)
    except FileNotFoundError:
        return values, held
    for key, entry in entries:
        if (pid := _marker_pid(key)) is not None:
            held.add(pid)
        else:
            values[key] = entry
    return values, held


def _commit(folded: Path, values: dict[str, Entry], held: set[str]) -> None:
    """Write ``folded`` anew under a temporary name, then rename it into place."""
    temporary = folded.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):  # left by a fold that failed: not appended to
        os.unlink(temporary)
    out = _files.MmapedDict(str(temporary))
    try:
        for pid in sorted(held):
            out.write_value(_marker_key(pid), 1.0, 0.0)
        for key, (value, timestamp) in values.items():
            out.write_value(key, value, timestamp)
    finally:
        out.close()
    os.replace(temporary, folded)


def _marker_key(pid: str) -> str:
    return json.dumps([_MARKER, _MARKER, {"pid": pid}, "a worker folded in"], sort_keys=True)


def _marker_pid(key: str) -> str | None:
    if not key.startswith(_MARKER_START):
        return None
    pid: str = json.loads(key)[2]["pid"]
    return pid


def _entries(file: Path) -> list[tuple[str, Entry]]:
    """Every (key, (value, timestamp)) of a metric file.

    Raises:
        FileNotFoundError: there is no such file.

    """
    found = _files.MmapedDict.read_all_values_from_file(str(file))
    return [(key, (value, timestamp)) for key, value, timestamp, _ in found]


class DirectoryCollector(Collector):
    """Every worker's metrics in ``path``, merged as prometheus-client merges them.

    Counters, histograms and summaries are summed over the workers, live and
    folded; gauges as their ``multiprocess_mode`` says. Unlike prometheus-client's
    ``MultiProcessCollector`` it reads the folded files as :func:`fold_dead`
    writes them: a scrape during a fold sees each total before the fold or after
    it, never a dead worker twice or not at all. :attr:`retries` counts the reads
    begun again because a fold committed meanwhile.

    Raises (from :meth:`collect`):
        RuntimeError: ``attempts`` reads in a row each saw a fold commit.
        OSError: the directory cannot be read.

    """

    def __init__(self, path: str | os.PathLike[str], *, attempts: int = 20) -> None:
        self.path = Path(path)
        self.attempts = attempts
        #: Reads begun again because a fold committed while they read.
        self.retries = 0

    def collect(self) -> Iterable[Metric]:
        """The merged metrics of every worker, live or folded."""
        for _ in range(self.attempts):
            metrics = self._read()
            if metrics is not None:
                return metrics
            self.retries += 1
        raise RuntimeError(
            f"{self.path}: a fold committed during each of {self.attempts} reads in a row"
        )

    def _read(self) -> list[Metric] | None:
        """One consistent read, or None when a fold committed while it read."""
        names = [name for name in os.listdir(self.path) if name.endswith(".db")]
        with contextlib.ExitStack() as stack:
            held: dict[Path, os.stat_result] = {}
            skipped: set[str] = set()
            for name in names:
                prefix, _, rest = name.rpartition("_")
                if rest != f"{_FOLDED}.db":
                    continue
                file = self.path / name
                try:
                    # Held open to the end: its inode cannot be reused, so a rename is seen.
                    fd = os.open(file, os.O_RDONLY | NOFOLLOW | CLOEXEC)
                    stack.callback(os.close, fd)
                    held[file] = os.fstat(fd)
                    _, pids = _read_folded(file)
                except FileNotFoundError:  # only prepare_dir removes one: read again
                    return None
                skipped.update(f"{prefix}_{pid}.db" for pid in pids)
            files = [str(self.path / name) for name in names if name not in skipped]
            try:
                merged: Iterable[Metric] = _multiprocess.MultiProcessCollector.merge(files)
            except FileNotFoundError:  # a worker's file removed by a fold since the listing
                return None
            for file, was in held.items():
                try:
                    now = os.stat(file, follow_symlinks=False)
                except FileNotFoundError:
                    return None
                if (now.st_dev, now.st_ino) != (was.st_dev, was.st_ino):
                    return None  # a fold committed: what was read may count a worker twice
        return [metric for metric in merged if metric.name != _MARKER]
