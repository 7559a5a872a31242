"""The log queue over real streams: an os.pipe() that nobody reads is a stalled log collector."""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import threading
import time
from collections.abc import Iterator

import pytest

from quiesce import App, ExitCode
from quiesce.logqueue import QUEUE_SIZE, LogQueue, current

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"quiesce.test.{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


def pipe_handler() -> tuple[logging.StreamHandler[io.TextIOWrapper], int]:
    """A handler writing into a pipe; returns it and the read end (nobody reads it yet)."""
    read_end, write_end = os.pipe()
    stream = open(write_end, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by the test
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler, read_end


class Reader:
    """Reads ``fd`` in a thread until EOF: the log collector coming back."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := os.read(self.fd, 65536):
            with self._changed:
                self.data.extend(chunk)
                self._changed.notify_all()

    def wait_for(self, needle: bytes, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: needle in self.data, timeout)

    def close(self) -> None:
        """Once the write end is closed: read to EOF, then release the read end."""
        self._thread.join(5)
        os.close(self.fd)


def test_log_queue_stalled_stream_never_blocks_the_caller_and_counts_what_it_drops(
    logger: logging.Logger,
) -> None:
    handler, read_end = pipe_handler()
    logger.addHandler(handler)
    logs = LogQueue(logger).install()
    began = time.monotonic()
    for i in range(5000):  # ~500 kB: far beyond the pipe's 64 kB and the queue
        logger.info("line %d %s", i, "x" * 80)
    assert time.monotonic() - began < 2.0, "a logging call waited on the stream"
    assert logs.dropped > 5000 - QUEUE_SIZE - 1000
    # The stream moves again: the writer says what was lost, once it could write.
    reader = Reader(read_end)
    assert reader.wait_for(b"log records dropped: the log stream did not keep up", 10)
    assert logs.close()
    # (pytest's own capture handler may sit beside it.)
    assert handler in logger.handlers, "the handlers are given back"
    assert not any(isinstance(h, logging.handlers.QueueHandler) for h in logger.handlers)
    handler.stream.close()
    reader.close()


def test_log_queue_close_on_a_stream_that_never_moves_is_bounded(logger: logging.Logger) -> None:
    handler, read_end = pipe_handler()
    logger.addHandler(handler)
    logs = LogQueue(logger).install()
    for i in range(3000):
        logger.info("line %d %s", i, "x" * 80)
    began = time.monotonic()
    assert logs.close(timeout=0.3) is False
    assert time.monotonic() - began < 0.3 + 0.5
    assert handler not in logger.handlers, "a stuck handler is not written to again"
    assert current() is None
    # Once the stream moves, a later close() writes the rest and gives the handler back.
    reader = Reader(read_end)
    assert logs.close(timeout=5)
    assert handler in logger.handlers
    assert reader.wait_for(b"log records dropped", 5)
    handler.stream.close()
    reader.close()


def test_log_queue_healthy_stream_writes_every_line_in_order_as_the_handler_would(
    logger: logging.Logger,
) -> None:
    direct, queued = io.StringIO(), io.StringIO()
    for stream in (direct, queued):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logs = LogQueue(logger).install() if stream is queued else None
        for i in range(200):
            logger.info("line %d", i)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed %s", "here")
        if logs is not None:
            assert logs.close()
        logger.removeHandler(handler)
    assert queued.getvalue() == direct.getvalue()
    assert "Traceback (most recent call last)" in queued.getvalue()


async def test_log_queue_option_under_serve_covers_the_run_and_gives_the_handlers_back() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    during: list[LogQueue | None] = []
    app = App(name="svc", log_queue=True)

    @app.after_start
    def check() -> None:
        during.append(current())
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    (logs,) = during
    assert logs is not None
    assert logs.logger is root
    assert current() is None
    assert root.handlers == before


async def test_log_queue_is_not_installed_under_serve_by_default() -> None:
    during: list[LogQueue | None] = []
    app = App(name="svc")

    @app.after_start
    def check() -> None:
        during.append(current())
        app.stop()

    await app.serve()
    assert during == [None]
