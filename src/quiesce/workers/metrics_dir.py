"""The workers' shared metrics directory, for an App with an admin server (``--admin-port``).

With it, one scrape of the admin server (whichever worker answers it) covers
every worker: prometheus-client's multiprocess mode, through
:mod:`quiesce.metrics_multiprocess`. The supervisor prepares the directory
before the first worker starts and folds each worker's files in as soon as
it is reaped (before a restart could reuse its pid), so that counters survive
worker churn and the directory does not grow with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quiesce.workers.describe import Description

__all__ = ["VARIABLE", "fold", "prepare"]

logger = logging.getLogger("quiesce.workers")

#: prometheus-client's switch to multiprocess mode (read when a worker imports it).
VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def prepare(description: Description, environ: Mapping[str, str], folder: str) -> str | None:
    """The directory for the workers' metrics, ready and empty; None when the App serves none.

    ``PROMETHEUS_MULTIPROC_DIR`` when the environment sets it, else ``metrics``
    in the supervisor's own ``folder``.

    Raises:
        OSError: the directory cannot be made, or is refused (another user's, a symlink...).

    """
    if not description.has_metrics:
        return None
    from quiesce.metrics_multiprocess import prepare_dir

    path = environ.get(VARIABLE) or os.path.join(folder, "metrics")
    return str(prepare_dir(path))


def fold(path: str | None, pid: int) -> None:
    """Fold the metrics of worker ``pid``, just reaped, into the directory's totals."""
    if path is None:
        return
    from quiesce.metrics_multiprocess import fold_dead

    try:
        fold_dead(path, pid)
    except (OSError, TimeoutError) as exc:  # the totals stay exact: the next fold finishes it
        logger.warning("folding the metrics of worker %d failed: %s", pid, exc)
