"""Where each option's value comes from, highest first: flag, environment, file, App, default.

The config file is ``--config FILE`` (or ``QUIESCE_CONFIG``), else
``./quiesce.toml``, else ``[tool.quiesce]`` in ``./pyproject.toml``. Every
value is parsed where it is read, so that a bad one is named with its source:
``--stop-timeout (env QUIESCE_STOP_TIMEOUT): 'soon': must be a positive number
of seconds``.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quiesce.cli.options import OPTIONS, Option
from quiesce.errors import ConfigError

__all__ = ["OptionError", "Setting", "config_file", "gather", "parse"]

logger = logging.getLogger("quiesce.cli")


class OptionError(ConfigError):
    """An option's value, or a config file, is bad; the message names the option and its source."""


@dataclass(frozen=True)
class Setting:
    """An option's effective value and where it came from."""

    value: Any
    #: ``flag``, ``env QUIESCE_X``, ``file quiesce.toml``, ``app`` or ``default``.
    source: str


def parse(option: Option, raw: object, source: str) -> Setting:
    """``raw`` parsed by ``option``.

    Raises:
        OptionError: ``--flag (source): value: why``.

    """
    try:
        return Setting(option.parse(raw), source)
    except ValueError as exc:
        raise OptionError(f"{option.flag} ({source}): {raw!r}: {exc}") from None


def by_env_name(name: str) -> str:
    """``stop_timeout`` -> ``QUIESCE_STOP_TIMEOUT``."""
    return "QUIESCE_" + name.upper()


def _suggest(key: str) -> str:
    names = [o.name for o in OPTIONS if not o.action and o.name != "config"]
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_file(
    flag: str | None, environ: Mapping[str, str], cwd: str
) -> tuple[str, dict[str, Any]]:
    """The config file's name and its quiesce table; ``("", {})`` when there is none.

    Raises:
        OptionError: the named file does not exist or is not valid TOML, or
            ``[tool.quiesce]`` is not a table.

    """
    named = flag if flag is not None else environ.get("QUIESCE_CONFIG")
    if named is not None:
        source = "flag" if flag is not None else "env QUIESCE_CONFIG"
        if not os.path.isfile(named):
            raise OptionError(f"--config ({source}): {named!r}: no such file")
        return named, _table(named, tool=os.path.basename(named) == "pyproject.toml")
    for name, tool in (("quiesce.toml", False), ("pyproject.toml", True)):
        path = os.path.join(cwd, name)
        if os.path.isfile(path):
            table = _table(path, tool=tool)
            if table or not tool:
                return name, table
    return "", {}


def _table(path: str, *, tool: bool) -> dict[str, Any]:
    name = os.path.basename(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"config file {name}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise OptionError(f"config file {name}: cannot read it: {exc.strerror}") from None
    if not tool:
        return data
    table = data.get("tool", {}).get("quiesce", {})
    if not isinstance(table, dict):
        raise OptionError(f"config file {name}: [tool.quiesce] must be a table")
    return table


def gather(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    file_name: str,
    table: Mapping[str, Any],
) -> dict[str, Setting]:
    """Each option's value from the flags, the environment and the config file (no defaults).

    ``flags`` holds only the options given on the command line.

    Raises:
        OptionError: the first bad value, or an unknown key in the config file.

    """
    settings: dict[str, Setting] = {}
    known = {o.name: o for o in OPTIONS}
    where = f"file {file_name}"
    for key, raw in table.items():
        name = str(key).replace("-", "_")
        option = known.get(name)
        if option is None or option.action or name == "config":
            why = "is set on the command line only" if option is not None else "is not an option"
            raise OptionError(f"config file {file_name}: {key!r} {why}{_suggest(name)}")
        settings[name] = parse(option, raw, where)
    prefix = "QUIESCE_"
    for variable, raw in environ.items():
        if not variable.startswith(prefix) or variable == "QUIESCE_CONFIG":
            continue
        option = known.get(variable[len(prefix) :].lower())
        if option is None or option.action:
            # QUIESCE_* of other tools (and of our tests) are left alone; a near miss of an
            # option's name is a typo that would silently change nothing: say it.
            names = [o.name for o in OPTIONS if not o.action and o.name != "config"]
            meant = difflib.get_close_matches(variable[len(prefix) :].lower(), names, 1, 0.85)
            if meant:
                logger.warning(
                    "environment %s is not a quiesce option (did you mean %s?)",
                    variable,
                    by_env_name(meant[0]),
                )
            continue
        settings[option.name] = parse(option, raw, f"env {variable}")
    for name, raw in flags.items():
        settings[name] = parse(known[name], raw, "flag")
    return settings
