"""A target whose own module turns logging down at import (``CLI_TEST_LOGGING`` says how).

quiesce has configured logging by then; the stop report must still reach stderr.
"""

from __future__ import annotations

import logging
import os

from cli.targets import hello

if os.environ["CLI_TEST_LOGGING"] == "setLevel":
    logging.getLogger().setLevel(logging.WARNING)
else:  # basicConfig: force=True replaces the handlers quiesce installed
    logging.basicConfig(level=logging.WARNING, force=True)

app = hello(b"quiet")
