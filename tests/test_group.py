"""ServerGroup: start by depends_on, stop in reverse, each stop bounded and recorded.

The servers here are stand-ins that only record calls: this is the ordering
and timeout logic; the real servers have their own tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from quiesce import Outcome, Server, StartError
from quiesce.budget import SERVER_STOP_MARGIN, StopBudget
from quiesce.group import ServerGroup
from quiesce.phases import PhaseRecord


class Part:
    """A server stand-in: records start and stop, optionally failing or hanging."""

    def __init__(
        self,
        name: str,
        log: list[str],
        *,
        depends_on: Sequence[str] = (),
        fail_start: bool = False,
        stop_for: float = 0.0,
        stop_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.depends_on: Sequence[str] = tuple(depends_on)
        self.stop_timeout = stop_timeout
        self.log = log
        self.fail_start = fail_start
        self.stop_for = stop_for
        self.closed = asyncio.Event()

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        await asyncio.sleep(0)
        if self.fail_start:
            raise OSError("address already in use")

    async def stop(self, timeout: float) -> list[str]:
        self.log.append(f"stop {self.name}")
        await asyncio.sleep(self.stop_for)
        return []

    async def drain(self) -> None:
        self.log.append(f"drain {self.name}")

    def endpoints(self) -> list[str]:
        return [f"tcp://{self.name}"]

    async def wait_closed(self) -> None:
        await self.closed.wait()


def record() -> PhaseRecord:
    return PhaseRecord("step", 0.0)


def test_part_implements_the_server_protocol() -> None:
    part: Server = Part("a", [])
    assert isinstance(part, Server)


async def test_group_starts_dependencies_first_and_stops_them_last() -> None:
    log: list[str] = []
    group = ServerGroup([Part("a", log, depends_on=["b"]), Part("b", log, depends_on=["c"])])
    group.servers.append(Part("c", log))
    await group.start(record(), 5)
    assert log == ["start c", "start b", "start a"]
    assert group.endpoints() == ("tcp://c", "tcp://b", "tcp://a")
    log.clear()
    rec = record()
    await group.stop(rec, StopBudget(5, reserve=0))
    assert log == ["stop a", "stop b", "stop c"]
    assert rec.outcome is Outcome.OK
    assert group.started == []


async def test_group_failed_start_names_the_server_and_leaves_it_out_of_started() -> None:
    log: list[str] = []
    group = ServerGroup([Part("ok", log), Part("bad", log, fail_start=True)])
    with pytest.raises(StartError, match=r"server 'bad'.*address already in use"):
        await group.start(record(), 5)
    assert [s.name for s in group.started] == ["ok"]


async def test_group_stop_cut_at_its_own_timeout_is_named_and_others_still_stop() -> None:
    log: list[str] = []
    slow = Part("slow", log, stop_for=10, stop_timeout=0.2)
    group = ServerGroup([slow, Part("quick", log)])
    await group.start(record(), 5)
    rec = record()
    began = time.monotonic()
    await group.stop(rec, StopBudget(5, reserve=0))
    took = time.monotonic() - began
    assert 0.2 <= took < 0.2 + SERVER_STOP_MARGIN + 0.5
    assert rec.outcome is Outcome.TIMEOUT
    assert rec.cut == ["server slow (stop did not return within 0.2s)"]
    assert sorted(log[-2:]) == ["stop quick", "stop slow"]
    assert group.started == []


async def test_group_default_timeout_applies_to_servers_without_their_own() -> None:
    log: list[str] = []
    group = ServerGroup([Part("slow", log, stop_for=10)])
    await group.start(record(), 5)
    rec = record()
    await group.stop(rec, StopBudget(5, reserve=0, server_default=0.1))
    assert rec.cut == ["server slow (stop did not return within 0.1s)"]


async def test_group_stop_never_outlasts_the_deadline_less_the_reserve() -> None:
    log: list[str] = []
    group = ServerGroup([Part("slow", log, stop_for=10, stop_timeout=30)])
    await group.start(record(), 5)
    began = time.monotonic()
    await group.stop(record(), StopBudget(1.0, reserve=0.6))
    # The server's own 30 s is capped by what is left (1.0 - 0.6), plus a margin that
    # itself never reaches into the second half of the reserve.
    took = time.monotonic() - began
    assert 1.0 - 0.6 <= took < 1.0 - 0.6 / 2 + 0.3


async def test_group_stop_at_once_names_every_server_as_cut() -> None:
    log: list[str] = []
    group = ServerGroup([Part("a", log), Part("b", log)])
    await group.start(record(), 5)
    rec = record()
    await group.stop_at_once(rec)
    assert sorted(rec.cut) == ["server a [stopped at once]", "server b [stopped at once]"]
    assert group.started == []


async def test_group_watch_reports_a_server_that_stops_serving_on_its_own() -> None:
    log: list[str] = []
    a, b = Part("a", log), Part("b", log)
    group = ServerGroup([a, b])
    await group.start(record(), 5)
    exited: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    group.watch(lambda name, cause: exited.put_nowait((name, cause)))
    a.closed.set()
    assert await asyncio.wait_for(exited.get(), 5) == ("a", "stopped serving")
    assert exited.empty(), "b still serves"
    group.unwatch()
