"""How the report names a task: its name, where it was spawned and where it is now.

The await chain is followed through nested coroutines, which
``Task.get_stack()`` does not do. A tracked task's coroutine runs inside the
tracker's wrapper (marked with :func:`tracked_wrapper`): that frame is not the
user's stack, and it holds the spawn site, so that a dump of every task of the
loop, given no sites, still names where each tracked task was spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from types import CodeType, FrameType
from typing import Any, TypeVar

__all__ = ["Entry", "Site", "describe_task", "frame_at", "task_stack", "tracked_wrapper", "where"]

#: Where tracked work was declared: the caller's code and line, taken once by the
#: public entry point (``App.spawn``, ``App.every``) and formatted only when reported.
Site = tuple[CodeType, int]

#: A tracked task's spawn site and its coroutine, kept so that a task cancelled
#: before its first step can close it (no "never awaited" warning).
Entry = tuple[Site, Coroutine[Any, Any, Any]]

Wrapper = TypeVar("Wrapper", bound=Callable[..., Coroutine[Any, Any, Any]])

# Set once, by the tracker's import (a tracked task cannot exist before it): this
# module names tasks without importing the tracker, which imports it.
_wrapper_code: CodeType | None = None


def tracked_wrapper(fn: Wrapper) -> Wrapper:
    """Mark ``fn`` as the coroutine function that runs each tracked task's coroutine.

    Its frames are left out of :func:`task_stack`, and :func:`describe_task`
    reads the spawn site from their ``entry`` local (an :data:`Entry`).
    """
    global _wrapper_code
    _wrapper_code = fn.__code__
    return fn


def task_stack(task: asyncio.Task[Any]) -> list[str]:
    """The task's await chain, outermost first, as ``file:line in func`` strings.

    Follows ``cr_await`` through nested coroutines, which ``Task.get_stack()``
    does not do.
    """
    frames: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame: FrameType | None = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        if frame.f_code is not _wrapper_code:  # the tracker's wrapper is not the user's stack
            frames.append(frame_at(frame))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def describe_task(task: asyncio.Task[Any], site: Site | None = None) -> str:
    """One line: the task's name, where it was spawned and where it is now.

    A tracked task knows its spawn site when ``site`` is not given (a dump of
    every task of the loop).
    """
    if site is None:
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is not None and frame.f_code is _wrapper_code:
            entry = frame.f_locals.get("entry")
            site = entry[0] if entry is not None else None
    text = f"task {task.get_name()!r}"
    if site is not None:
        text += f" spawned at {where(*site)}"
    stack = task_stack(task)
    if stack:
        text += " at " + " <- ".join(reversed(stack))
    return text


def frame_at(frame: FrameType) -> str:
    """Where ``frame`` is now: ``path:line in func``."""
    return f"{where(frame.f_code, frame.f_lineno)} in {frame.f_code.co_name}"


def where(code: CodeType, line: int) -> str:
    """``path:line`` of ``code``, the path relative when under the working directory."""
    # Relative paths: shorter report lines.
    path = code.co_filename
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(path)
        if not relative.startswith(".."):
            path = relative
    return f"{path}:{line}"
