"""What ``quiesce run TARGET`` serves: ``module:attr`` or ``path/to/file.py:attr``, imported.

The attribute is an :class:`~quiesce.App`, an ASGI app, or (with
``--factory``) a callable, sync or async, that returns one of them. Every way
this can go wrong is one :class:`TargetError` line, never the import's
traceback: a typo in a deploy must not look like a crash.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
from collections.abc import Awaitable
from typing import Any

from quiesce.errors import ConfigError
from quiesce.process import new_event_loop

__all__ = ["TargetError", "import_target", "is_asgi", "load"]


class TargetError(ConfigError):
    """The target cannot be imported, found, built, or is neither an App nor an ASGI app."""


def import_target(spec: str, app_dir: str = ".") -> Any:
    """Import ``module:attr`` (``a.b:c.d`` for nested attributes) or ``file.py:attr``.

    ``app_dir`` goes first on ``sys.path``, as uvicorn's ``--app-dir`` does.

    Raises:
        TargetError: a malformed spec, an unimportable module (its own error in
            one line), or a missing attribute.

    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"{spec!r}: expected module:attribute or path/to/file.py:attribute")
    folder = os.path.abspath(app_dir)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = _import(module_name, folder)
    except TargetError:
        raise
    except SystemExit as exc:  # the module ran app.run() at import, or exited on its own
        raise TargetError(f"{spec!r}: importing {module_name} exited with {exc.code}") from None
    except BaseException as exc:
        where = _where(exc)
        raise TargetError(
            f"{spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}{where}"
        ) from None
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise TargetError(f"{spec!r}: {module_name} has no attribute {attr!r}") from None
    return value


def _import(module_name: str, folder: str) -> Any:
    if module_name.endswith(".py") or os.sep in module_name:
        path = module_name if os.path.isabs(module_name) else os.path.join(folder, module_name)
        if not os.path.isfile(path):
            raise TargetError(f"{module_name!r}: no such file")
        # Its own folder too: a script's sibling imports work as with `python file.py`.
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise TargetError(f"{module_name!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise TargetError(f"{module_name!r}: no module named {exc.name!r}") from None
        raise


def _where(exc: BaseException) -> str:
    """`` (file.py:12)``: the innermost frame of the user's code that raised.

    Not the standard library's, nor an installed package's, nor the import machinery's.
    """
    paths = sysconfig.get_paths()
    libraries = tuple(
        os.path.join(paths[key], "") for key in ("stdlib", "platstdlib", "purelib", "platlib")
    )
    tb = exc.__traceback__
    last = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith(("<", *libraries)):
            last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    return f" ({os.path.relpath(last.tb_frame.f_code.co_filename)}:{last.tb_lineno})"


def is_asgi(value: object) -> bool:
    """Whether ``value`` looks like an ASGI 3 app: an async callable of (scope, receive, send)."""
    if not callable(value):
        return False
    func: Any = value
    call = func if inspect.isroutine(func) else func.__call__
    if not inspect.iscoroutinefunction(call):
        return False
    try:
        params = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return True  # a C-level callable: let uvicorn judge it
    return len(params) == 3 or any(p.kind is p.VAR_POSITIONAL for p in params.values())


def load(spec: str, *, factory: bool, app_dir: str) -> Any:
    """The target's value: imported, and with ``factory`` called.

    An async factory runs on a new event loop that stays the current one, so
    that what it builds for that loop (a ``grpc.aio.Server``) is served on it.

    Raises:
        TargetError: see :func:`import_target`; a factory that is not callable,
            takes arguments, or raises.

    """
    value = import_target(spec, app_dir)
    if not factory:
        return value
    if not callable(value):
        raise TargetError(f"{spec!r} (--factory): {type(value).__name__} is not callable")
    try:
        made = value()
        if inspect.isawaitable(made):
            loop = new_event_loop()
            asyncio.set_event_loop(loop)
            made = loop.run_until_complete(_awaited(made))
    except TypeError as exc:
        raise TargetError(f"{spec!r} (--factory): calling it failed: {exc}") from None
    except Exception as exc:
        raise TargetError(
            f"{spec!r} (--factory): it raised {type(exc).__name__}: {exc}{_where(exc)}"
        ) from None
    return made


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
