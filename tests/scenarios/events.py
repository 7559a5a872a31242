"""How scenario services tell their tests what happened: one line on stdout per event."""

from __future__ import annotations

import sys
import time


def say(line: str) -> None:
    """Write ``line`` in one write: the log writer thread shares the pipe and must not split it.

    ``print()`` on an unbuffered stdout writes the text and the newline separately.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def event(what: str) -> None:
    """``EVENT <what> <monotonic time>``, read by ``conftest.Service.events``."""
    say(f"EVENT {what} {time.monotonic():.6f}")
