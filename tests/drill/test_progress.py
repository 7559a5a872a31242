"""The live progress line: rewritten in place on a terminal, one line a second in a log."""

from __future__ import annotations

import asyncio
import io

import pytest

from quiesce.drill import progress
from quiesce.drill.progress import Progress


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same ratio as the real intervals (0.25 s, 1 s), four times quicker.
    monkeypatch.setattr(progress, "TTY_INTERVAL", 0.0625)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.25)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def _show(stream: io.StringIO, seconds: float, began: float = 1.0) -> str:
    counts = iter(range(0, 10_000, 100))
    shown = Progress(stream, lambda: (next(counts), 3), lambda: "i0: serving", lambda: began)
    shown.start()
    await asyncio.sleep(seconds)
    await shown.close()
    return stream.getvalue()


async def test_progress_on_a_terminal_rewrites_one_line() -> None:
    text = await _show(_Terminal(), 3.5 * progress.TTY_INTERVAL)
    assert text.count("\r") >= 3  # the updates and the last state
    assert text.count("\n") == 1  # only the end of the line, at the close
    assert text.endswith("\n")
    assert "failed  i0: serving" in text
    assert "req/s" in text


async def test_progress_in_a_log_writes_a_line_a_second() -> None:
    text = await _show(io.StringIO(), 1.5 * progress.LOG_INTERVAL)
    lines = text.splitlines()
    assert len(lines) == 2  # one after a second, and the last state
    assert "\r" not in text
    assert all(line.startswith("drill +") and "3 failed" in line for line in lines)


async def test_progress_before_the_load_leaves_nothing_in_a_log() -> None:
    # A drill that fails to start says so in one line: no progress around it.
    assert await _show(io.StringIO(), 1.2 * progress.LOG_INTERVAL, began=0.0) == ""
