"""``python -m quiesce``: the same as the ``quiesce`` command."""

from quiesce.cli import main

main(prog_name="quiesce")
