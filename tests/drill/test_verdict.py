"""The verdict's rules on made-up samples (pure logic), and clients that notice changes late."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from quiesce.drill.load import Sample
from quiesce.drill.notice import LateDiscovery
from quiesce.drill.verdict import Stop, Verdict, judge
from quiesce.registry import Instance, Watch

T0 = 100.0
#: The late discovery's delay in its test.
DELAY = 0.5
#: A lone instance: SIGTERM at +1 s, exit at +2 s, exit 0 with a clean report.
CLEAN = Stop(
    "i0", 1234, signalled=T0 + 1, exited=T0 + 2, exit_code=0, report={"exit_code": 0, "stop": []}
)


def _settings(instances: int = 1) -> dict[str, Any]:
    return {
        "target": "app:app",
        "command": None,
        "instances": instances,
        "clients": 2,
        "duration": 3.0,
        "signal_at": 1.0,
        "path": "/",
        "retries": 0,
    }


def _judge(samples: list[Sample], stop: Stop = CLEAN, instances: int = 1) -> Verdict:
    return judge(
        settings=_settings(instances),
        samples=samples,
        examples={},
        stops=[stop],
        t0=T0,
        span=3.0,
        problems=[],
        exit_timeout=60.0,
        writes_report=True,
    )


def test_verdict_counts_each_request_in_the_window_it_was_sent_in() -> None:
    samples = [
        Sample(0.2, "ok", False),
        Sample(0.999, "ok", False),
        Sample(1.0, "ok", False),  # sent at the signal: during
        Sample(1.5, "refused", False),
        Sample(2.0, "refused", False),  # sent at the exit: after
        Sample(2.5, "HTTP 503", False),
    ]
    verdict = _judge(samples)
    windows = verdict.as_dict()["windows"]
    assert windows["before"] == {"sent": 2, "ok": 2, "failed": 0, "by_kind": {}, "retried": 0}
    assert windows["during"]["by_kind"] == {"refused": 1}
    assert windows["after"]["by_kind"] == {"HTTP 503": 1, "refused": 1}
    assert verdict.total.sent == 6
    # One instance: what fails once it has stopped is what any client of it sees.
    assert verdict.passed
    assert verdict.exit_code == 0
    assert len(verdict.notes) == 1
    assert "after the exit, 2 requests failed" in verdict.notes[0]


def test_verdict_one_instance_fails_on_a_request_sent_before_the_signal() -> None:
    verdict = _judge([Sample(0.2, "ok", False), Sample(0.9, "reset", False)])
    assert not verdict.passed
    assert verdict.exit_code == 1
    assert verdict.problems == ["1 requests sent before the signal failed (reset 1)"]


def test_verdict_several_instances_fail_on_any_failed_request() -> None:
    samples = [Sample(0.2, "ok", False), Sample(2.5, "refused", False)]
    assert _judge(samples).passed  # after the lone instance's exit: expected
    verdict = _judge(samples, instances=3)
    assert verdict.problems == ["1 of 2 requests failed (after: refused 1)"]


def test_verdict_unclean_stop_fails_and_says_why() -> None:
    samples = [Sample(0.2, "ok", False)]
    cut = {
        "exit_code": 3,
        "stop": [{"name": "stop_servers", "cut": ["connection 1"], "errors": []}],
    }
    incomplete = Stop("i0", 1, T0 + 1, T0 + 2, exit_code=3, report=cut)
    assert _judge(samples, incomplete).problems == ["i0 exited 3 after SIGTERM (cut connection 1)"]
    killed = Stop("i0", 1, T0 + 1, T0 + 2, exit_code=-9, killed=True, report=None)
    problems = _judge(samples, killed).problems
    assert problems[0] == "i0 did not exit within 60s of SIGTERM (--exit-timeout): killed"
    early = Stop("i0", 1, signalled=None, exited=T0 + 0.5, exit_code=1)
    assert _judge(samples, early).problems[0] == (
        "i0 exited 1 on its own, before the drill signalled it"
    )


def test_verdict_nothing_answered_before_the_signal_proves_nothing() -> None:
    verdict = _judge([Sample(1.5, "ok", False)])
    assert verdict.problems == [
        "no request sent before the signal was answered ok: nothing was proven"
    ]


def test_verdict_timeline_counts_every_request_once_per_bucket() -> None:
    samples = [Sample(0.05, "ok", False), Sample(0.15, "ok", True), Sample(2.99, "reset", False)]
    timeline = _judge(samples).timeline
    assert timeline["kinds"] == ["ok", "reset"]
    assert len(timeline["counts"]["ok"]) == 30  # 3 s in 100 ms bars
    assert timeline["counts"]["ok"][:2] == [1, 1]
    assert timeline["counts"]["reset"][29] == 1
    assert sum(map(sum, timeline["counts"].values())) == len(samples)


class _Changing:
    """A fake Discovery whose watch yields the lists it is given (pure logic)."""

    def __init__(self) -> None:
        self.lists: asyncio.Queue[list[Instance]] = asyncio.Queue()

    async def instances(self, name: str) -> list[Instance]:
        return []

    def watch(self, name: str) -> Watch:
        async def source() -> AsyncGenerator[list[Instance], None]:
            while True:
                yield await self.lists.get()

        return Watch(source())


async def test_late_discovery_passes_the_first_list_at_once_and_changes_delay_late() -> None:
    inner = _Changing()
    late = LateDiscovery(inner, DELAY)
    one = Instance("a", "svc", endpoints=["http://127.0.0.1:1001"])
    two = Instance("b", "svc", endpoints=["http://127.0.0.1:1002?isSecure=false"])
    inner.lists.put_nowait([one])
    async with late.watch("svc") as watch:
        began = time.monotonic()
        assert await anext(watch) == [one]
        assert time.monotonic() - began < DELAY  # the state at the start: not delayed
        changed = time.monotonic()
        inner.lists.put_nowait([one, two])
        waiter = asyncio.ensure_future(late.until_delivered(1002))
        assert await anext(watch) == [one, two]
        assert time.monotonic() - changed >= DELAY
        async with asyncio.timeout(1):
            await waiter  # the delivered list has the instance on that port
