"""The reference of ``quiesce run`` as Markdown, rendered from :data:`~quiesce.cli.options.OPTIONS`.

``docs/cli.md`` is this module's output, and ``tests/test_docs.py`` fails
when the two differ, so the reference cannot drift from the options it
describes. Regenerate it after changing an option::

    python -m quiesce.cli.reference docs/cli.md

The sample error lines and the sample stop budget are produced by the code
that prints them (the option parsers, :meth:`quiesce.App.check`), not copied
from a terminal, for the same reason.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quiesce.cli.options import LOG_LEVELS, MAX_WORKERS, OPTIONS, Option, by_name
from quiesce.cli.sources import OptionError, gather, parse
from quiesce.config import MAX_SECONDS
from quiesce.drain import Drain

__all__ = ["EXAMPLE_TOML", "from_environment", "in_file", "main", "render"]

#: The config file shown in the reference; the docs test reads it back through the sources.
EXAMPLE_TOML = """\
target = "main:app"
host = "0.0.0.0"
port = 8000
drain_delay = "min=1,max=10,idle=0.5"
stop_timeout = 25
access_log = false
"""

_DRAIN = Drain()

#: What each kind of value is, by the metavar its options show.
VALUES = {
    "TARGET": "`module:attr` (`a.b:c.d` for a nested attribute) or `path/to/file.py:attr`",
    "DIR": "a folder, relative to the current directory",
    "HOST": "an address to bind: `127.0.0.1` (the default, loopback only) or `0.0.0.0`",
    "PORT": "an integer from 0 to 65535 (0: the system picks a free port)",
    "N": f"an integer from 1 to {MAX_WORKERS} ([workers](workers.md))",
    "URL": "a registry URL: `file:`, `file:///dir`, `etcd://host:port` ([registry](registry.md))",
    "NAME": "a non-empty string",
    "ENGINE": "`uvicorn` (the default) or `granian` (`quiesce[granian]`; [granian](granian.md))",
    "SECONDS": f"a positive, finite number of seconds, at most {MAX_SECONDS:g} (a day)",
    "DELAY": (
        "seconds (0: no drain), or an adaptive drain `min=S,max=S,idle=S` (each part optional;"
        f" defaults `min={_DRAIN.min:g},max={_DRAIN.max:g},idle={_DRAIN.idle:g}`;"
        " see [the adaptive drain](concepts.md#the-adaptive-drain))"
    ),
    "LEVEL": "one of " + ", ".join(f"`{level}`" for level in LOG_LEVELS) + " (uvicorn's names)",
    "PATH": "a file path (its folder must exist); created owner-only (0600), a symlink is refused",
    "FILE": "a TOML file",
    "": (
        "on the command line the flag itself; in a variable or a file"
        " `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (in a file also TOML's `true`/`false`)"
    ),
}


def from_environment(option: Option) -> bool:
    """Whether a ``QUIESCE_<OPTION>`` variable sets ``option``: all but the flag-only actions."""
    return not option.action


def in_file(option: Option) -> bool:
    """Whether a config file key sets ``option``: not the actions, nor ``config`` (the file)."""
    return not option.action and option.name != "config"


def render() -> str:
    """The whole reference, as ``docs/cli.md`` holds it.

    Raises:
        KeyError: an option's metavar has no entry in :data:`VALUES`.

    """
    parts = [
        _HEAD,
        "## Options\n",
        _table(),
        _values(),
        _SOURCES.format(budget=_sample_budget(), example=EXAMPLE_TOML),
        _ERRORS.format(bad_value=_sample_bad_value(), bad_key=_sample_bad_key()),
        _TARGETS,
    ]
    return "\n".join(parts).rstrip("\n") + "\n"


def _table() -> str:
    rows = [
        "| flag | environment | config key | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        env = f"`{option.env}`" if from_environment(option) else "—"
        key = f"`{option.name}`" if in_file(option) else "—"
        meaning = option.help.replace("|", "\\|")
        if option.app is not None:
            meaning += f"; an App target's `{option.app}`"
        if option.action:
            meaning += " (flag only)"
        rows.append(f"| {_flag(option)} | {env} | {key} | {_default(option)} | {meaning} |")
    return "\n".join(rows) + "\n"


def _flag(option: Option) -> str:
    if option.name == "target":
        return "`TARGET` (argument)"
    if option.switch:
        return f"`{option.flag}` / `--no-{option.flag[2:]}`"
    if option.action or not option.metavar:
        return f"`{option.flag}`"
    return f"`{option.flag} {option.metavar}`"


def _default(option: Option) -> str:
    """The default as a TOML value would write it; — for none."""
    value = option.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _values() -> str:
    used: list[str] = []
    for option in OPTIONS:
        if option.metavar not in used:
            used.append(option.metavar)
    lines = ["Values:\n"]
    for metavar in used:
        label = f"`{metavar}`" if metavar else "switches"
        lines.append(f"- {label}: {VALUES[metavar]}")
    return "\n".join(lines) + "\n"


def _sample_bad_value() -> str:
    try:
        parse(by_name("stop_timeout"), "soon", "env QUIESCE_STOP_TIMEOUT")
    except OptionError as exc:
        return f"quiesce: {exc}"
    raise RuntimeError("'soon' was taken as a stop timeout")


def _sample_bad_key() -> str:
    try:
        gather({}, {}, "quiesce.toml", {"stop_timout": 20})
    except OptionError as exc:
        return f"quiesce: {exc}"
    raise RuntimeError("'stop_timout' was taken as a config key")


def _sample_budget() -> str:
    """What ``--check-config`` says of an app with one server and every default."""
    from quiesce.app import App
    from quiesce.servers.contract import BaseServer

    class Http(BaseServer):
        name = "http"

    return App(name="example", servers=[Http()]).check()


_HEAD = """\
# `quiesce run`: the command line and configuration reference

<!-- Generated from quiesce.cli.options.OPTIONS by `python -m quiesce.cli.reference docs/cli.md`;
     tests/test_docs.py fails when this file and the options differ. Do not edit it by hand. -->

```sh
quiesce run TARGET [options]
python -m quiesce run TARGET [options]      # the same
quiesce --version
quiesce run --help                          # -h too
```

`quiesce run` serves TARGET — an `App`, an ASGI app, or with `--factory` what a
callable returns — until a stop signal, then stops it as the
[stop sequence](concepts.md#the-stop) says and exits with the
[report's exit code](concepts.md#the-report-and-the-exit-codes).
`quiesce drill` is described in [concepts](concepts.md#proving-a-stop-quiesce-drill).
"""

_SOURCES = """\
## Where a value comes from

Highest first:

1. a flag on the command line;
2. a `QUIESCE_<OPTION>` environment variable (`QUIESCE_STOP_TIMEOUT=20`);
3. the config file (one file, see below);
4. with an App target, the App's own arguments (`App(stop_timeout=20)`);
5. the default.

Variables named `QUIESCE_*` that are not options are left alone (other tools
use the prefix). `--print-config` prints every option's effective value and
where it came from (`flag`, `env QUIESCE_PORT`, `file quiesce.toml`, `app`,
`default`), then exits 0. `--check-config` checks everything a start would
check — it imports the target, builds the App and checks every option and
server, and the stop budget against `--grace-period` — without binding a
port, prints what would be served and the budget, and exits 0 (or 2 with the
one line of the first problem). The budget of an app with one server and
every default:

```
{budget}
```

A budget that does not fit the grace period is a warning with the same
numbers, at `--check-config` and at every start; `--check-config` still exits 0.

### The config file

The first of these that exists is read, and only that one:

1. `--config FILE`, else the file named by `QUIESCE_CONFIG` (a missing file is an error);
2. `./quiesce.toml` (keys at the top level);
3. `./pyproject.toml`, its `[tool.quiesce]` table (skipped when the table is absent or empty).

`./` is the current directory, not `--app-dir`. A `--config` file named
`pyproject.toml` is read from its `[tool.quiesce]` table. Keys are the option
names; `-` may stand for `_` (`stop-timeout`). Values are TOML: numbers,
strings, `true`/`false`; a drain delay is a number or a string
(`"min=1,max=10,idle=0.5"`). For example, `quiesce.toml`:

```toml
{example}```

In `pyproject.toml` the same keys go under `[tool.quiesce]`.
"""

_ERRORS = """\
## Bad input

Any bad input — a flag that does not exist, a value that does not parse, a
timeout that is negative, infinite or over a day, a target that cannot be
imported or is neither an App nor an ASGI app, an unknown registry scheme, a
config file that is not valid TOML or has an unknown key — is one line on
stderr naming the option and where its value came from, and exit code 2,
before anything binds a port:

```
{bad_value}
{bad_key}
```
"""

_TARGETS = """\
## What the options do to the target

- **An ASGI app**: `quiesce run` builds an `App` with the options you set
  (its name by default the last part of the module's name: `orders.main:api`
  is `main`), around one `HTTPServer(target, host=..., port=...,
  access_log=..., engine=...)` from `--host`, `--port`, `--access-log` and
  `--engine`.
- **An App**: only what you set (flag, variable, file) overrides the App's own
  arguments. `--host`, `--port`, `--access-log` and `--engine` set those of its one
  `HTTPServer`; an App with none or several is refused (exit 2: set them in
  code). `--grpc-port` without `--grpc` sets the port of its one
  `GRPCServer` (refused when it has none or several).
- **`--grpc module:attr`**, with either target: adds a `GRPCServer` of that
  `grpc.aio.Server` (or factory) on `--grpc-port`.
- **`--factory`**: TARGET is called with no arguments; an async factory runs on
  a new event loop that stays the current one, so a `grpc.aio.Server` it
  builds is served on that loop.
- **`--app-dir DIR`** goes first on `sys.path`, as with uvicorn; a
  `file.py:attr` target is looked for from there, and its own folder is put on
  `sys.path` too (sibling imports work as with `python file.py`).
- **Logging**: `--log-level` sets up one handler on stderr before the target
  is imported (the format of `app.run()`), behind the bounded log queue the
  README describes; `--no-access-log` turns uvicorn's access lines off. The
  stop report reaches stderr even when the level hides INFO.
"""


def main(argv: Sequence[str]) -> int:
    """``python -m quiesce.cli.reference [PATH]``: write the reference to PATH, or print it."""
    text = render()
    if not argv:
        sys.stdout.write(text)
        return 0
    with open(argv[0], "w", encoding="utf-8") as out:
        out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
