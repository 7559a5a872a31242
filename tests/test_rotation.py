"""The discovery client's rotation on its own: no httpx, no network, no registry."""

from __future__ import annotations

import asyncio
import logging

import pytest

from quiesce.backoff import backoff_delay
from quiesce.registry import Instance
from quiesce.rotation import Rotation, Target


def instance(ident: str, *endpoints: str) -> Instance:
    return Instance(id=ident, name="orders", endpoints=endpoints or (f"http://{ident}:80",))


def rotation(*idents: str, threshold: int = 2, eject: float = 60.0) -> Rotation:
    made = Rotation(ejection_threshold=threshold, ejection_time=eject, owner="transport")
    made.update([instance(i) for i in idents])
    return made


def first_choices(rot: Rotation, requests: int) -> list[str]:
    chosen = [rot.choose(rot.start(), []) for _ in range(requests)]
    return [t.instance.id for t in chosen if t is not None]


def test_rotation_round_robin_starts_each_request_one_further() -> None:
    assert first_choices(rotation("a", "b", "c"), 6) == ["a", "b", "c", "a", "b", "c"]


def test_rotation_choose_skips_tried_targets_then_gives_none() -> None:
    rot = rotation("a", "b")
    position = rot.start()
    a = rot.choose(position, [])
    assert a is not None
    b = rot.choose(rot.after(a, position), [a])
    assert b is not None
    assert b.instance.id == "b"
    assert rot.choose(position, [a, b]) is None


def test_rotation_update_keeps_failure_records_and_drops_non_http_instances() -> None:
    rot = rotation("a", "b")
    a = rot.targets[0]
    rot.connect_failed(a, OSError("refused"))
    rot.update([instance("g", "grpc://g:9000"), instance("b"), instance("a")])
    assert [t.instance.id for t in rot.targets] == ["b", "a"]
    assert rot.targets[1] is a
    assert a.failures == 1


def test_rotation_ejects_after_the_threshold_and_logs_to_the_client_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="quiesce.client")
    rot = rotation("a", "b", threshold=2)
    a = rot.targets[0]
    rot.connect_failed(a, OSError("refused"))
    assert not a.ejected_until
    rot.connect_failed(a, OSError("refused"))
    assert a.ejected_until
    assert first_choices(rot, 4) == ["b", "b", "b", "b"]
    assert "'transport': ejected instance 'a' (http://a:80)" in caplog.text


def test_rotation_never_ejects_the_last_target_in() -> None:
    rot = rotation("a", threshold=1)
    rot.connect_failed(rot.targets[0], OSError("refused"))
    assert not rot.targets[0].ejected_until


def test_rotation_uses_an_ejected_target_when_no_other_is_left() -> None:
    rot = rotation("a", "b", threshold=1)
    a, b = rot.targets
    rot.connect_failed(a, OSError("refused"))
    assert rot.choose(0, [b]) is a


def test_rotation_takes_a_target_back_once_its_ejection_ran_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="quiesce.client")
    rot = rotation("a", "b", threshold=1, eject=0.0)
    a: Target = rot.targets[0]
    rot.connect_failed(a, OSError("refused"))
    assert a.ejected_until
    assert rot.choose(0, []) is a
    assert (a.ejected_until, a.failures) == (0.0, 0)
    assert "back in the rotation" in caplog.text


def test_rotation_wait_for_any_returns_once_the_watch_gives_a_target() -> None:
    async def scenario() -> None:
        rot = rotation()
        waiting = asyncio.create_task(rot.wait_for_any())
        await asyncio.sleep(0)
        assert not waiting.done()
        rot.update([instance("a")])
        async with asyncio.timeout(1.0):
            await waiting

    asyncio.run(scenario())


def test_backoff_delay_doubles_up_to_the_cap_within_the_jitter() -> None:
    for failures, full in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 2.0), (10_000, 2.0)]:
        delay = backoff_delay(failures, first=0.1, cap=2.0)
        assert full * 0.5 <= delay <= full
