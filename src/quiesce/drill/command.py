"""``quiesce drill``: the command line of the drill (options, their checks, the exit code).

Only click and the options are imported here: the load, the service and the
registry backends are imported when the drill runs, so that ``--help`` is quick and a missing
optional dependency is one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from quiesce.config import seconds_error
from quiesce.drill.options import DrillOptions

__all__ = ["command"]

logger = logging.getLogger("quiesce.drill")


class _Seconds(click.ParamType):  # type: ignore[type-arg]  # generic in new click only
    """A finite number of seconds, above 0 (or at least 0 with ``zero=True``)."""

    name = "seconds"

    def __init__(self, *, zero: bool = False) -> None:
        self.zero = zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if (must := seconds_error(seconds, zero_ok=self.zero)) is None:
            return seconds
        if must.startswith("at most"):  # a load or a wait of more than a day is not bounded
            self.fail(f"{value!r}: must be {must}", param, ctx)
        bound = "0 or more" if self.zero else "above 0"
        self.fail(f"{value!r}: must be a finite number of seconds, {bound}", param, ctx)


def _fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit (``sys.exit``: it holds in and out of standalone mode)."""
    click.echo(f"quiesce drill: {message}", err=True)
    sys.exit(code)


#: The options that take a value, in --help's order: flag, type, help. Each one's default is
#: DrillOptions' (one place says it).
_VALUES: list[tuple[str, Any, str]] = [
    ("--clients", click.IntRange(min=1), "Concurrent keep-alive clients, one request at a time."),
    ("--duration", _Seconds(), "Seconds of load (--instances: at least until the restart ends)."),
    ("--signal-at", _Seconds(), "Seconds into the load when SIGTERM is sent (the restart begins)."),
    ("--path", str, "The path the load GETs."),
    ("--instances", click.IntRange(min=1), "Run this many on a registry; restart each in turn."),
    ("--registry", str, "The registry for --instances (default: a private file registry)."),
    ("--retries", click.IntRange(min=0), "Model clients retrying a refused or broken request."),
    (
        "--notice-delay",
        _Seconds(zero=True),
        "With --instances: seconds clients take to notice an instance left or joined, as "
        "behind a load balancer (0: as fast as the registry's watch).",
    ),
    ("--ready-timeout", _Seconds(), "Seconds an instance may take to become ready."),
    ("--exit-timeout", _Seconds(), "Seconds to exit after SIGTERM; then it is killed."),
    ("--request-timeout", _Seconds(), "Seconds one request may take."),
]


_METAVARS = {"--path": "PATH", "--registry": "URL"}


def _value_options(fn: Any) -> Any:
    for flag, kind, help_ in reversed(_VALUES):
        default = getattr(DrillOptions, flag[2:].replace("-", "_"))
        fn = click.option(
            flag,
            type=kind,
            default=default,
            show_default=True,
            metavar=_METAVARS.get(flag),
            help=help_,
        )(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target", required=False)
@click.option(
    "--command",
    metavar="CMD",
    help="Drill this command instead of a TARGET: it must listen on {port}; {report}, "
    "{registry} and {name} are also replaced. Split like a shell, run without one.",
)
@_value_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the verdict as JSON on stdout (the text goes to stderr).",
)
@click.option(
    "--html",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the verdict as one self-contained HTML page with the chart.",
)
def command(target: str | None, as_json: bool, html: Path | None, **options: Any) -> None:
    """Prove that a service stops without losing a request.

    Starts TARGET (module:attr or file.py:attr, served by `quiesce run`) or
    --command on a loopback port, waits until it is ready (GET /readyz answers
    200; a command: GET PATH answers), sends it loopback load, SIGTERMs it at
    --signal-at and keeps the load on. The verdict counts requests sent before,
    during (until the service exited) and after the stop, failed by kind:
    HTTP status, refused, reset, timeout.

    Exit 0 only if no request sent before the signal failed (with --instances:
    no request at all) and every stop was clean (exit 0, and the service's own
    stop report says so); 1 otherwise; 2 for bad options.
    """
    _check(target, html, options)
    try:
        from quiesce.drill.scenario import run_drill
        from quiesce.drill.service import DrillError
        from quiesce.drill.verdict import Verdict
        from quiesce.errors import ConfigError
    except ImportError as exc:
        _fail(f"needs httpx: pip install 'quiesce[drill]' ({exc})")
    drill = DrillOptions(target=target, **options)
    if not logging.getLogger().handlers:
        # The discovery client's warnings (an instance ejected) belong with the progress.
        logging.basicConfig(level=logging.WARNING, format="quiesce drill: %(name)s: %(message)s")

    async def main() -> Verdict:
        # SIGTERM (a CI job cancelled) ends the drill as Ctrl+C does: through its
        # cleanup, which kills every service it started and removes its directory.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run_drill(drill, sys.stderr)

    try:
        verdict = asyncio.run(main())
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl+C); every service it started was stopped", 130)
    except asyncio.CancelledError:
        _fail("interrupted (SIGTERM); every service it started was stopped", 128 + signal.SIGTERM)
    except ConfigError as exc:
        _fail(str(exc))
    except DrillError as exc:
        _fail(str(exc), 1)
    except Exception as exc:
        logger.debug("the drill failed", exc_info=True)
        _fail(f"the drill itself failed: {exc!r}", 1)
    data = verdict.as_dict()
    if as_json:
        click.echo(verdict.to_text(), err=True)
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(verdict.to_text())
    if html is not None:
        from quiesce.drill.html import render

        try:
            _write_private(html, render(data))
        except OSError as exc:
            _fail(f"--html {html}: cannot write it: {exc.strerror or exc}", 1)
    sys.exit(verdict.exit_code)


def _check(target: str | None, html: Path | None, o: dict[str, Any]) -> None:
    """The checks between options, each failing with one line and exit 2."""
    if (target is None) == (o["command"] is None):
        _fail("give either a TARGET (module:attr or file.py:attr) or --command, not both")
    if o["command"] is not None:
        if "{port}" not in o["command"]:
            _fail(f"--command {o['command']!r}: must contain {{port}}, the port to listen on")
        try:
            shlex.split(o["command"])
        except ValueError as exc:
            _fail(f"--command {o['command']!r}: {exc} (it is split as a shell would)")
    if o["signal_at"] >= o["duration"]:
        _fail(
            f"--signal-at {o['signal_at']:g} must come before the end of --duration "
            f"{o['duration']:g}"
        )
    if not o["path"].startswith("/"):
        _fail(f"--path {o['path']!r}: must be a path starting with /")
    if o["registry"] is not None:
        if o["instances"] < 2:
            _fail("--registry is for --instances 2 or more")
        from quiesce.errors import ConfigError
        from quiesce.registry import from_url

        try:
            from_url(o["registry"])
        except ConfigError as exc:
            _fail(f"--registry: {exc}")
    if html is not None and not html.parent.is_dir():
        _fail(f"--html {html}: {html.parent} is not a directory")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, owner-only when created; a symlink is refused (ELOOP)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
