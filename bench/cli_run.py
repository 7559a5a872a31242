"""``quiesce run`` against the uvicorn CLI on the same ASGI app: throughput, p99, idle stop.

Run: ``python bench/cli_run.py [pairs] [seconds] [stop rounds]``. Both are
commands a user types (``quiesce run stop_targets:asgi_app --no-access-log``
and ``uvicorn stop_targets:asgi_app --loop uvloop --http httptools
--no-access-log``), measured side by side in one run: first the throughput
pairs (as ``http_throughput.py``: wrk on its own core, the kinds alternating),
then the idle stop (SIGTERM to exit, the kinds alternating round by round).
Goals: throughput >= 0.98x the CLI; the idle stop no slower.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from http_throughput import main as throughput
from stoptime import compare

PY = sys.executable
TARGET = "bench/stop_targets.py"
KINDS: dict[str, list[str]] = {
    "quiesce-run": [PY, TARGET, "quiesce-run"],
    "uvicorn-cli": [PY, TARGET, "uvicorn-cli"],
}

if __name__ == "__main__":
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    throughput(pairs, seconds, KINDS)
    print("idle stop (SIGTERM to exit):")
    compare(dict[str, Sequence[str]](KINDS), rounds, baseline="uvicorn-cli")
