"""``quiesce drill --instances 3``: a rolling restart behind the discovery client.

It must tell a good stop from a bad one: an App that drains for longer than
the clients take to notice passes; bare uvicorn (no deregistration, listener
closed at the signal) and an App with ``drain_delay=0`` fail, naming the
failures, although each of their processes exits 0 or by the signal alone.
"""

from __future__ import annotations

import re

from drill.run import SHORT, drill, python_command

UVICORN = python_command(
    "-m", "uvicorn", "--app-dir", "tests/drill", "plain:app", "--port", "{port}"
)
#: Shorter than apps.DRAIN_DELAY (1 s): the drained App covers it, drain_delay=0 does not.
NOTICE = ["--notice-delay", "0.5"]


def _failed(stdout: str) -> tuple[int, str]:
    found = re.search(r"problem: (\d+) of \d+ requests failed \((.*)\)", stdout)
    assert found is not None, stdout
    return int(found.group(1)), found.group(2)


def test_drill_instances_bare_uvicorn_fails_naming_the_failures() -> None:
    # The defaults of the rolling restart: no retries, clients notice a change 1 s late.
    result = drill("--command", UVICORN, "--instances", "3", "--json", *SHORT)
    assert result.code == 1, result
    count, kinds = _failed(result.stderr)  # the text verdict: on stderr with --json
    assert count >= 1
    assert "during: refused" in kinds  # its listener closed before the clients noticed
    verdict = result.verdict
    assert verdict["total"]["failed"] == count
    # The drill registered each (uvicorn does not), withdrew it at its SIGTERM, restarted it.
    assert [s["instance"] for s in verdict["stops"]] == ["i0", "i1", "i2"]
    assert all(s["signalled"] is not None for s in verdict["stops"])
    # uvicorn re-raises the signal after its shutdown: no exit code says how it went.
    assert all(s["exit_code"] == -15 for s in verdict["stops"])


def test_drill_instances_app_without_drain_delay_fails_though_each_stop_is_clean() -> None:
    result = drill("tests/drill/apps.py:nodrain", "--instances", "3", "--json", *NOTICE, *SHORT)
    assert result.code == 1, result
    verdict = result.verdict
    assert verdict["total"]["failed"] >= 1
    assert verdict["windows"]["during"]["by_kind"].get("refused", 0) >= 1
    (problem,) = verdict["problems"]  # the lost requests, nothing else
    assert re.fullmatch(r"\d+ of \d+ requests failed \(.*refused \d+.*\)", problem), problem
    # Each instance registered itself, deregistered and exited 0: its own report is clean.
    assert len(verdict["stops"]) == 3
    for stop in verdict["stops"]:
        assert stop["exit_code"] == 0
        assert stop["report"]["exit_code"] == 0
        outcomes = {p["name"]: p["outcome"] for p in stop["phases"]}
        assert outcomes["deregister"] == "ok"
        assert outcomes["drain"] == "skipped"


def test_drill_instances_app_that_drains_passes() -> None:
    result = drill("tests/drill/apps.py:drained", "--instances", "3", "--json", *NOTICE, *SHORT)
    assert result.code == 0, result
    verdict = result.verdict
    assert verdict["problems"] == []
    assert verdict["total"]["failed"] == 0
    assert verdict["windows"]["during"]["ok"] > 0
    assert [s["instance"] for s in verdict["stops"]] == ["i0", "i1", "i2"]
    for stop in verdict["stops"]:
        drain = next(p for p in stop["phases"] if p["name"] == "drain")
        assert drain["outcome"] == "ok"
        assert drain["duration"] >= 0.9


def test_drill_instances_retries_count_the_requests_that_needed_one() -> None:
    result = drill("--command", UVICORN, "--instances", "2", "--retries", "2", "--json", *SHORT)
    verdict = result.verdict
    # The instance that closed stays in the clients' rotation until it is ejected or
    # noticed: each request that met it first was refused there, then sent elsewhere.
    assert verdict["total"]["retried"] >= 1, result
    assert verdict["windows"]["during"]["retried"] >= 1
    assert "retried" in result.stderr  # the text verdict's column
