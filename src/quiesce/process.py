"""Owning the process, for :meth:`quiesce.App.run`: the loop, logging, leftovers, the exit.

Library code never exits the process; only :func:`run_and_exit` (behind
``App.run()``) and the last-resort watchdog (:mod:`quiesce.watchdog`) do.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from quiesce.logqueue import FLUSH_TIMEOUT, LogQueue, write_within

__all__ = ["LEAVE_MARGIN", "new_event_loop", "run_and_exit"]

#: Past ``cancel_grace``, how long the leftover tasks may hold the exit (a task that blocks
#: the loop when cancelled) before the process leaves with the code it already has.
LEAVE_MARGIN = 1.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop :meth:`App.run` uses: uvloop when installed (~10% more requests), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_and_exit(
    main: Callable[[], Coroutine[Any, Any, int]],
    cancel_grace: float,
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    log_queue: bool | None = None,
) -> NoReturn:
    """Run ``main()`` in ``loop`` (default: a new one), clean up, exit with the code it returns.

    Logging goes through a :class:`~quiesce.logqueue.LogQueue` (``log_queue``
    None: when this call set up the handlers; True: over the host's too).
    Tasks still in the loop afterwards are cancelled and get ``cancel_grace``
    seconds; if one ignores that, or a stream does not take the last lines,
    the process leaves at once (the report has already named it) instead of
    hanging in the loop's shutdown or the interpreter's.
    """
    configured = configure_logging()
    logs = LogQueue().install() if log_queue or (log_queue is None and configured) else None
    if loop is None or loop.is_closed() or loop.is_running():
        loop = new_event_loop()
    asyncio.set_event_loop(loop)
    code = 1  # main() raised: the traceback says why
    try:
        code = loop.run_until_complete(main())
    finally:
        # The report is final and its code is the exit code: nothing may hold the exit.
        leave = threading.Timer(cancel_grace + LEAVE_MARGIN, os._exit, (code,))
        leave.daemon = True
        leave.start()
        leftovers = _cancel_leftovers(loop, cancel_grace)
    if not leftovers:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    leave.cancel()
    asyncio.set_event_loop(None)
    delivered = logs.close() if logs is not None else True
    if leftovers or not delivered or not _flushed(sys.stdout, sys.stderr):
        # Closing the loop would only print "Task was destroyed but it is pending", and the
        # interpreter's own flushes would wait on a stream that does not move.
        os._exit(code)
    # The interpreter's full collections at shutdown cost 25-80 ms, most of an idle
    # stop; frozen objects are skipped. atexit handlers, logging and stdio still flush.
    gc.freeze()
    sys.exit(code)


def configure_logging(level: int = logging.INFO) -> bool:
    """Log lifecycle lines to stderr at ``level``, unless the host configured logging itself.

    Returns True when it set up the handlers.
    """
    if logging.getLogger().handlers:
        return False
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: the registry keepalive would fill the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return True


def _flushed(*streams: Any, timeout: float = FLUSH_TIMEOUT) -> bool:
    """Flush ``streams`` within ``timeout`` seconds (a thread: a full pipe blocks a flush)."""

    def flush() -> None:
        for stream in streams:
            with contextlib.suppress(Exception):  # closed or broken: nothing left to lose
                stream.flush()

    return write_within(timeout, flush, "quiesce flush")


def _cancel_leftovers(loop: asyncio.AbstractEventLoop, grace: float) -> set[asyncio.Task[Any]]:
    """Cancel the tasks still in the loop; return those that ignored it for ``grace`` seconds."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return set()
    for task in tasks:
        task.cancel()
    _, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=grace))
    for task in tasks - pending:
        if not task.cancelled():
            task.exception()  # retrieved: the report and the log already have it
    return pending
