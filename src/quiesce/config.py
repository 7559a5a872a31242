"""Checking an app's options before anything starts: one :class:`ConfigError` line each.

A bad option must fail before a signal handler is installed or a port bound
(exit code 2), naming the option and the value, so that nothing is lost to a
typo in a deploy.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import math
import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec

from quiesce import ordering
from quiesce.errors import ConfigError
from quiesce.ordering import Named
from quiesce.registry import Registry

__all__ = [
    "KUBERNETES_GRACE",
    "check_identity",
    "check_names",
    "check_period",
    "check_registry",
    "check_report_file",
    "check_seconds",
    "check_signals",
    "check_stop_budget",
]

logger = logging.getLogger("quiesce.lifecycle")

#: Kubernetes' default terminationGracePeriodSeconds: a larger stop budget gets a warning.
KUBERNETES_GRACE = 30.0
#: The longest any duration may be (a day): far beyond any sane stop, and well inside what
#: a timer thread can hold (``threading.TIMEOUT_MAX``; ``1e10`` used to kill the watchdog).
MAX_SECONDS = 86400.0
#: Signals a process cannot catch: as stop signals they could never stop anything.
UNCATCHABLE = frozenset(s for s in (getattr(signal, n, None) for n in ("SIGKILL", "SIGSTOP")) if s)


def seconds_error(value: object, *, zero_ok: bool = False) -> str | None:
    """What ``value`` must be to be a duration, or None when it is one.

    A duration is a finite number of seconds, above zero (or zero, with
    ``zero_ok``), at most :data:`MAX_SECONDS`: the one rule every option,
    flag and variable of seconds is held to.
    """
    must = "zero or more seconds" if zero_ok else "a positive number of seconds"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return must
    # Not infinite either: every wait is bounded, and a timer cannot hold inf.
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        return must
    if value > MAX_SECONDS:
        return f"at most {MAX_SECONDS:g} seconds"
    return None


def check_seconds(options: Mapping[str, Any], *, zero_ok: bool = False) -> None:
    """Check that each option is a duration (see :func:`seconds_error`).

    Raises:
        ConfigError: the first bad option, named with its value.

    """
    for option, value in options.items():
        if (must := seconds_error(value, zero_ok=zero_ok)) is not None:
            raise ConfigError(f"{option}={value!r}: must be {must}")


def check_period(seconds: object, fn: object) -> None:
    """Check the period of ``app.every(seconds, fn)``.

    Raises:
        ConfigError: ``every(<seconds>, <fn>): ...``.

    """
    try:
        check_seconds({"period": seconds})
    except ConfigError as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise ConfigError(f"every({seconds!r}, {name}): {exc}") from None


P = ParamSpec("P")


def lenient(init: Callable[P, None]) -> Callable[P, None]:
    """Wrap an ``__init__`` so that a bad call is a configuration error at validation, not now.

    ``App(drain_dealy=1)`` (a typo) must end ``app.run()`` with exit code 2 and one
    line, like any other bad option, instead of a TypeError traceback at import
    time. Type checkers still see (and check) the strict signature. The
    instance gets ``_given`` (the options passed) and ``_call_errors`` (why
    the call was bad), which :func:`check_call` turns into the error.
    """
    params = inspect.signature(init).parameters
    keywords = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    required = [n for n in keywords if params[n].default is inspect.Parameter.empty]

    @functools.wraps(init)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        self, extra = args[0], args[1:]
        errors = []
        if extra:
            errors.append(f"{type(self).__name__}({extra[0]!r}, ...): options are keywords")
        call = type(self).__name__
        for name in [k for k in kwargs if k not in keywords]:
            close = difflib.get_close_matches(name, keywords, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            errors.append(f"{call}({name}={kwargs.pop(name)!r}): unknown option{hint}")
        errors.extend(f"{call}({n}=...) is required" for n in required if n not in kwargs)
        kwargs.update({name: None for name in required if name not in kwargs})
        init(*(self,), **kwargs)  # type: ignore[arg-type]
        self._given = frozenset(kwargs)  # type: ignore[attr-defined]
        self._call_errors = errors  # type: ignore[attr-defined]

    return wrapper


def check_call(errors: Sequence[str]) -> None:
    """Raise the first error :func:`lenient` kept.

    Raises:
        ConfigError: the first bad option of the constructor call.

    """
    if errors:
        raise ConfigError(errors[0])


def check_stop_budget(
    *,
    drain_delay: float,
    cleanup_reserve: float,
    stop_timeout: float,
    grace_period: float = 30.0,
) -> None:
    """Check that the drain delay fits the stop budget; warn when the platform would cut it.

    Raises:
        ConfigError: the drain delay and the cleanup reserve use up ``stop_timeout``.

    """
    if drain_delay + cleanup_reserve >= stop_timeout:
        raise ConfigError(
            f"drain_delay={drain_delay}s does not fit stop_timeout={stop_timeout}s "
            f"with {cleanup_reserve}s kept for after_stop and resources"
        )
    if stop_timeout > grace_period:
        logger.warning(
            "stop_timeout=%ss exceeds the grace period (%ss, Kubernetes' default "
            "terminationGracePeriodSeconds is %ss): raise it, or the instance may be killed "
            "mid-stop",
            stop_timeout,
            grace_period,
            KUBERNETES_GRACE,
        )


def stop_budget_line(parts: Mapping[str, float], stop_timeout: float, grace_period: float) -> str:
    """What the stop can take at most, part by part, against the platform's grace period.

    ``parts`` are the longest each part can take (the drain, the slowest
    server stop, the stop hooks, the cleanup reserve); ``stop_timeout`` bounds
    their sum.
    """
    total = sum(parts.values())
    longest = min(total, stop_timeout)
    terms = " + ".join(f"{name} {value:g}s" for name, value in parts.items())
    verdict = "fits" if longest <= grace_period else "does NOT fit"
    return (
        f"stop budget: {terms} = {total:g}s, at most stop_timeout={stop_timeout:g}s; "
        f"grace period {grace_period:g}s: {verdict}"
    )


def check_signals(signals: object) -> None:
    """Check that ``signals`` is a collection of signals a process can catch.

    Raises:
        ConfigError: naming the first value that is not one (SIGKILL and SIGSTOP
            cannot be caught).

    """
    if isinstance(signals, str | bytes) or not isinstance(signals, Iterable):
        raise ConfigError(f"signals={signals!r}: must be a list of signals, like [SIGTERM]")
    valid = signal.valid_signals()
    for sig in signals:
        if isinstance(sig, bool) or not isinstance(sig, int) or sig not in valid:
            raise ConfigError(f"signals: {sig!r} is not a signal")
        if sig in UNCATCHABLE:
            name = signal.Signals(sig).name
            raise ConfigError(f"signals: {name} cannot be caught, so it cannot stop the app")


def check_names(servers: Sequence[Named], resources: Sequence[Named]) -> None:
    """Check names and ``depends_on``: unique, known, and without cycles.

    Raises:
        ConfigError: a name used twice or an unknown dependency.
        DependencyCycleError: naming the cycle, e.g. ``a -> b -> a``.

    """
    names: dict[str, str] = {}
    for kind, items in (("server", servers), ("resource", resources)):
        for item in items:
            if item.name in names:
                raise ConfigError(f"{kind} name {item.name!r} is already a {names[item.name]}")
            names[item.name] = kind
    graph = ordering.graph_of(resources)
    ordering.validate(graph)
    ordering.validate(ordering.graph_of(servers), known=list(graph))


def check_report_file(path: object) -> None:
    """Check that the report can be written to ``path``: its folder exists and is writable.

    Raises:
        ConfigError: ``report_file=<path>: <why>``.

    """
    if path is None:
        return
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"report_file={path!r}: must be a path")
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    why = None
    if os.path.islink(target):  # written with O_NOFOLLOW: a planted link must not redirect it
        why = "is a symbolic link"
    elif os.path.isdir(target):
        why = "is a directory"
    elif not os.path.isdir(folder):
        why = f"the directory {folder} does not exist"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why = f"the directory {folder} is not writable"
    elif os.path.exists(target) and not os.access(target, os.W_OK):
        why = "is not writable"
    if why is not None:
        raise ConfigError(f"report_file={target!r}: {why}")


def check_identity(name: object, version: object) -> None:
    """Check the service name and version: non-empty strings (they make the registry key).

    Raises:
        ConfigError: naming the option and its value.

    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name={name!r}: an app needs a name (a non-empty string)")
    if not isinstance(version, str):
        raise ConfigError(f"version={version!r}: must be a string")


def check_registry(registry: object) -> None:
    """Check that ``registry`` is None, a URL, or implements :class:`~quiesce.Registry`.

    Raises:
        ConfigError: naming what it got.

    """
    if registry is None or isinstance(registry, str | Registry):
        return
    raise ConfigError(
        f"registry: {type(registry).__name__} is neither a URL nor a quiesce.Registry "
        "(needs register and deregister)"
    )
