from __future__ import annotations

import asyncio

import pytest

from quiesce.errors import ConfigError, DependencyCycleError
from quiesce.ordering import reverse, stable_order, validate, walk


def test_validate_cycle_names_the_cycle() -> None:
    with pytest.raises(DependencyCycleError, match=r"dependency cycle: a -> b -> a"):
        validate({"a": ["b"], "b": ["a"], "c": []})


def test_validate_longer_cycle_through_a_tail() -> None:
    with pytest.raises(DependencyCycleError) as info:
        validate({"x": ["a"], "a": ["b"], "b": ["c"], "c": ["a"]})
    assert info.value.cycle == ["a", "b", "c", "a"]


def test_validate_self_dependency_is_a_cycle() -> None:
    with pytest.raises(DependencyCycleError, match="a -> a"):
        validate({"a": ["a"]})


def test_validate_unknown_dependency_is_config_error() -> None:
    with pytest.raises(ConfigError, match="'a' depends on unknown 'db'"):
        validate({"a": ["db"]})
    validate({"a": ["db"]}, known=["db"])


def test_stable_order_keeps_declaration_order_where_free() -> None:
    assert stable_order({"a": [], "b": ["c"], "c": [], "d": []}) == ["a", "c", "b", "d"]


def test_reverse_lists_dependents() -> None:
    assert reverse({"a": ["b"], "b": ["c"], "c": []}) == {"a": [], "b": ["a"], "c": ["b"]}


async def test_walk_runs_dependencies_first_and_independent_nodes_concurrently() -> None:
    log: list[str] = []
    running: set[str] = set()
    overlap: list[set[str]] = []

    async def action(node: str) -> None:
        running.add(node)
        log.append(f"begin {node}")
        await asyncio.sleep(0.05)
        overlap.append(set(running))
        running.discard(node)
        log.append(f"end {node}")

    await walk({"a": ["b"], "b": [], "x": []}, action)
    assert log.index("end b") < log.index("begin a")
    assert any({"b", "x"} <= seen for seen in overlap), "independent nodes overlap in time"


async def test_walk_failure_cancels_the_rest_and_raises_the_first_error() -> None:
    cancelled = asyncio.Event()

    async def action(node: str) -> None:
        if node == "bad":
            raise ValueError("boom")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ValueError, match="boom"):
        async with asyncio.timeout(2):
            await walk({"bad": [], "slow": []}, action)
    assert cancelled.is_set()
