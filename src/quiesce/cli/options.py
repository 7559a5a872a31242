"""Every option of ``quiesce run``, defined once: its flag, its parser, its default, its help.

The same table makes the click options, reads ``QUIESCE_<OPTION>`` variables
and ``[tool.quiesce]`` / ``quiesce.toml`` keys, prints ``--print-config`` and
writes the reference in ``docs/cli.md``, so none of them can drift from the
others. A parser takes text (a flag, a variable) or a TOML value and raises
:class:`ValueError` with what the value must be; the caller names the option
and where the value came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quiesce.config import MAX_SECONDS, seconds_error
from quiesce.drain import Drain, check_drain, parse_drain
from quiesce.errors import ConfigError

__all__ = ["LOG_LEVELS", "MAX_WORKERS", "OPTIONS", "Option", "by_name"]

#: The levels ``--log-level`` takes, as uvicorn names them.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _seconds(value: object) -> float:
    number = _number(value)
    if seconds_error(number) is not None:
        raise ValueError(f"must be a positive number of seconds, at most {MAX_SECONDS:g}")
    return number


def _number(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError("must be a number of seconds") from None


def _delay(value: object) -> float | Drain:
    try:
        delay = parse_drain(str(value)) if isinstance(value, str) else _number(value)
        check_drain(delay)
    except ConfigError as exc:
        # "drain_delay=...: must be ..." -> just the reason; the caller names the option.
        raise ValueError(str(exc).partition(": ")[2] or str(exc)) from None
    return delay


def _port(value: object) -> int:
    text = str(value).strip()
    digits = text.isascii() and text.isdigit()  # not "²" nor other scripts' digits
    if isinstance(value, bool) or not digits or not 0 <= int(text) <= 65535:
        raise ValueError("must be an integer from 0 to 65535")
    return int(text)


#: The most worker processes ``--workers`` takes (a typo of 10000 must not fork-bomb the host).
MAX_WORKERS = 256


def _count(value: object) -> int:
    text = str(value).strip()
    digits = text.isascii() and text.isdigit()
    if isinstance(value, bool) or not digits or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"must be an integer from 1 to {MAX_WORKERS}")
    return int(text)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _target(value: object) -> str:
    text = _text(value)
    module, sep, attr = text.rpartition(":")
    if not sep or not module or not attr:
        raise ValueError("must be module:attribute or path/to/file.py:attribute")
    return text


def _switch(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _log_level(value: object) -> str:
    text = str(value).strip().lower()
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text


#: The HTTP engines ``HTTPServer(engine=...)`` takes.
ENGINES = ("uvicorn", "granian")


def _engine(value: object) -> str:
    text = str(value).strip().lower()
    if text not in ENGINES:
        raise ValueError(f"must be one of {', '.join(ENGINES)}")
    return text


def _url(value: object) -> str:
    text = _text(value)
    if ":" not in text:
        raise ValueError("must be a registry URL (file:, file:///dir, etcd://host:port)")
    return text


@dataclass(frozen=True)
class Option:
    """One option of ``quiesce run``.

    ``app`` is the App attribute it sets (None: not an App option). ``switch``
    makes a ``--x/--no-x`` flag pair; ``action`` options are flags only (never
    from the environment or a file).
    """

    name: str
    parse: Callable[[object], Any]
    default: Any
    help: str
    metavar: str = ""
    app: str | None = None
    switch: bool = False
    action: bool = False

    @property
    def flag(self) -> str:
        """``--stop-timeout`` (``TARGET`` for the argument)."""
        if self.name == "target":
            return "TARGET"
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """``QUIESCE_STOP_TIMEOUT``."""
        return "QUIESCE_" + self.name.upper()


OPTIONS = (
    Option("target", _target, None, "what to serve: module:attr or file.py:attr", "TARGET"),
    Option("factory", _switch, False, "TARGET is a callable (sync or async) that returns it"),
    Option("app_dir", _text, ".", "look for TARGET's module in this folder first", "DIR"),
    Option("host", _text, "127.0.0.1", "the HTTP server's address (of several: 'http')", "HOST"),
    Option("port", _port, 8000, "the HTTP server's port (0: any free one)", "PORT"),
    Option("grpc", _target, None, "also serve this grpc.aio.Server (or factory)", "TARGET"),
    Option("grpc_port", _port, 50051, "the gRPC server's port", "PORT"),
    Option("admin_port", _port, None, "serve /metrics and /debug/tasks on this port", "PORT"),
    Option("registry", _url, None, "register the instance there", "URL", app="registry"),
    Option("name", _text, None, "the service name (default: the target's module)", "NAME", "name"),
    Option(
        "drain_delay",
        _delay,
        0.0,
        "serve on after deregistering: seconds, or min=S,max=S,idle=S",
        "DELAY",
        app="drain_delay",
    ),
    Option("stop_timeout", _seconds, 30.0, "the whole stop's budget", "SECONDS", "stop_timeout"),
    Option("start_timeout", _seconds, 30.0, "the whole start's budget", "SECONDS", "start_timeout"),
    Option("hook_timeout", _seconds, 10.0, "each hook's timeout", "SECONDS", "hook_timeout"),
    Option(
        "grace_period",
        _seconds,
        30.0,
        "the platform's kill deadline (Kubernetes terminationGracePeriodSeconds)",
        "SECONDS",
        app="grace_period",
    ),
    Option(
        "workers",
        _count,
        None,
        "serve with N worker processes under a supervisor; SIGHUP reloads them",
        "N",
    ),
    Option(
        "reload_batch",
        _count,
        1,
        "with --workers: workers a SIGHUP replaces at a time (at most --workers)",
        "N",
    ),
    Option("log_level", _log_level, "info", f"one of {', '.join(LOG_LEVELS)}", "LEVEL"),
    Option("access_log", _switch, True, "log each HTTP request", switch=True),
    Option("engine", _engine, "uvicorn", "the HTTP server's engine: uvicorn or granian", "ENGINE"),
    Option(
        "report_json", _text, None, "also write the stop report there", "PATH", app="report_file"
    ),
    Option("config", _text, None, "read options from this TOML file", "FILE"),
    Option("print_config", _switch, False, "print every option with its source; exit", action=True),
    Option(
        "check_config", _switch, False, "check everything without serving; exit 0 or 2", action=True
    ),
)


def by_name(name: str) -> Option:
    """The option called ``name`` (``stop_timeout``)."""
    for option in OPTIONS:
        if option.name == name:
            return option
    raise KeyError(name)
