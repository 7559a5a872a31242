"""Idle stop: SIGTERM to process exit, quiesce vs aiohttp's web.run_app (goal: no slower).

Run: ``python bench/idle_stop.py [rounds]``. The kinds alternate round by round.
"""

from __future__ import annotations

import sys

from stoptime import compare

PY = sys.executable
TARGET = "bench/stop_targets.py"

if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    compare(
        {
            "aiohttp": [PY, TARGET, "aiohttp"],
            "quiesce-stream": [PY, TARGET, "quiesce-stream"],
        },
        rounds,
        baseline="aiohttp",
    )
