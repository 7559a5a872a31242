"""The ``quiesce`` command: ``quiesce run`` serves a target, ``quiesce drill`` proves its stop.

Each subcommand lives in a module of its own and is loaded only when asked
for, so that ``quiesce --version`` stays fast and a drill never imports the
servers it does not run.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from quiesce.errors import ConfigError

__all__ = ["main"]

#: Each subcommand and the module whose ``command`` it is.
COMMANDS = {"run": "quiesce.cli.run", "drill": "quiesce.drill.command"}


class _Lazy(click.Group):
    def main(  # type: ignore[override]  # always standalone: it exits
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> NoReturn:
        """Run; a usage error or a bad option is one line on stderr and exit 2, never more."""
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
            # Not standalone, click returns a subcommand's ctx.exit(n) instead of exiting.
            sys.exit(code if isinstance(code, int) else 0)
        except click.UsageError as exc:
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else "quiesce: "
            click.echo(f"{where}{exc.format_message()}", err=True)
            sys.exit(2)
        except ConfigError as exc:
            click.echo(f"quiesce: {exc}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            sys.exit(130)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        try:
            command: click.Command = importlib.import_module(module).command
        except ModuleNotFoundError as exc:  # an optional part that is not installed
            if exc.name is None or not module.startswith(exc.name):
                raise
            return None
        return command


@click.group(cls=_Lazy, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quiesce", prog_name="quiesce")
def main(**_: Any) -> None:
    """A lifecycle runtime for asyncio services."""
