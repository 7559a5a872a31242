"""The ``quiesce`` command: ``quiesce run`` serves a target, ``quiesce drill`` proves its stop.

Each subcommand lives in a module of its own and is loaded only when asked
for, so that ``quiesce --version`` stays fast and a drill never imports the
servers it does not run.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["main"]

#: Each subcommand and the module whose ``command`` it is.
COMMANDS = {"run": "quiesce.cli.run", "drill": "quiesce.drill.command"}


class _Lazy(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = importlib.import_module(module).command
        return command


@click.group(cls=_Lazy, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quiesce", prog_name="quiesce")
def main(**_: Any) -> None:
    """A lifecycle runtime for asyncio services."""
