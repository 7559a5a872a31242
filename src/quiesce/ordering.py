"""The ``depends_on`` graph: its checks, the resources' order, the servers' start and stop walks.

Nodes are names; edges point from a node to what it depends on. The checks
raise before any port is bound. Servers start by :func:`walk` over the graph
and stop by :func:`walk` over its :func:`reverse`, with no barrier per level.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from quiesce.errors import ConfigError, DependencyCycleError

__all__ = ["Named", "graph_of", "reverse", "stable_order", "validate", "walk"]


class Named(Protocol):
    """A server or a resource: a name, and the names it depends on."""

    @property
    def name(self) -> str:
        """Unique within the app."""

    @property
    def depends_on(self) -> Sequence[str]:
        """The names that must be up before this one starts."""


def graph_of(items: Iterable[Named]) -> dict[str, list[str]]:
    """The graph of ``items``: each name with the names it depends on."""
    return {item.name: list(item.depends_on) for item in items}


def validate(graph: Mapping[str, Sequence[str]], *, known: Sequence[str] = ()) -> None:
    """Check that every dependency exists and that there is no cycle.

    ``known`` names nodes that may be depended on but live outside ``graph``
    (servers may depend on resources, which are always ready first).

    Raises:
        ConfigError: a dependency names nothing.
        DependencyCycleError: the graph has a cycle; the message names it.

    """
    for node, deps in graph.items():
        for dep in deps:
            if dep not in graph and dep not in known:
                raise ConfigError(f"{node!r} depends on unknown {dep!r}")
    _find_cycle(graph)


def _find_cycle(graph: Mapping[str, Sequence[str]]) -> None:
    # Iterative DFS with colours; on a back edge, the path from the target gives the cycle.
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in graph:
        if colour[root] != white:
            continue
        path: list[str] = [root]
        stack = [iter(graph[root])]
        colour[root] = grey
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                colour[path.pop()] = black
                stack.pop()
                continue
            if dep not in graph:
                continue
            if colour[dep] == grey:
                raise DependencyCycleError([*path[path.index(dep) :], dep])
            if colour[dep] == white:
                colour[dep] = grey
                path.append(dep)
                stack.append(iter(graph[dep]))


def stable_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """A topological order that keeps declaration order wherever it can.

    Used for resources, which are entered one at a time and closed LIFO.
    """
    done: set[str] = set()
    order: list[str] = []

    def visit(node: str) -> None:
        if node in done:
            return
        done.add(node)
        for dep in graph[node]:
            if dep in graph:
                visit(dep)
        order.append(node)

    for node in graph:
        visit(node)
    return order


def reverse(graph: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The graph of dependents: stopping walks it, so a node stops after what uses it."""
    dependents: dict[str, list[str]] = {node: [] for node in graph}
    for node, deps in graph.items():
        for dep in deps:
            if dep in dependents:
                dependents[dep].append(node)
    return dependents


async def walk(
    graph: Mapping[str, Sequence[str]], action: Callable[[str], Awaitable[None]]
) -> None:
    """Run ``action(node)`` for every node as soon as its dependencies' actions have finished.

    Independent nodes run concurrently: there is no barrier per level, so a
    slow node only delays what depends on it (go-zero's ServiceGroup waited for
    everything). If an action raises, the others are cancelled and the first
    error is raised.
    """
    finished = {node: asyncio.Event() for node in graph}

    async def one(node: str) -> None:
        for dep in graph[node]:
            if dep in finished:
                await finished[dep].wait()
        await action(node)
        finished[node].set()

    try:
        async with asyncio.TaskGroup() as group:
            for node in graph:
                group.create_task(one(node), name=f"quiesce {node}")
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        raise first from first.__cause__  # keep its own cause; the group only wrapped it
