"""Option checks: each bad option is one ConfigError line naming the option and its value."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from quiesce import ConfigError, DependencyCycleError
from quiesce.config import (
    KUBERNETES_GRACE,
    check_identity,
    check_names,
    check_registry,
    check_seconds,
    check_signals,
    check_stop_budget,
)
from quiesce.registry.file import FileRegistry


@dataclass
class Part:
    name: str
    depends_on: tuple[str, ...] = ()


@pytest.mark.parametrize(
    ("value", "zero_ok", "message"),
    [
        (0, False, "t=0: must be a positive number of seconds"),
        (-1, True, "t=-1: must be zero or more seconds"),
        ("5", False, "t='5': must be a positive number of seconds"),
        (None, True, "t=None: must be zero or more seconds"),
        (float("inf"), False, "t=inf: must be a positive number of seconds"),
        (float("nan"), True, "t=nan: must be zero or more seconds"),
        (True, False, "t=True: must be a positive number of seconds"),
    ],
)
def test_check_seconds_bad_value_names_option_and_value(
    value: object, zero_ok: bool, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_seconds({"t": value}, zero_ok=zero_ok)
    assert str(info.value) == message


def test_check_seconds_accepts_ints_floats_and_zero_when_allowed() -> None:
    check_seconds({"a": 1, "b": 0.25})
    check_seconds({"c": 0}, zero_ok=True)


def test_check_stop_budget_drain_that_leaves_no_room_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"drain_delay=9s does not fit stop_timeout=10s"):
        check_stop_budget(drain_delay=9, cleanup_reserve=1, stop_timeout=10)
    check_stop_budget(drain_delay=8.9, cleanup_reserve=1, stop_timeout=10)


def test_check_stop_budget_beyond_kubernetes_grace_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "quiesce.lifecycle"):
        check_stop_budget(drain_delay=0, cleanup_reserve=5, stop_timeout=KUBERNETES_GRACE)
        assert caplog.records == []
        check_stop_budget(drain_delay=0, cleanup_reserve=5, stop_timeout=KUBERNETES_GRACE + 1)
    (record,) = caplog.records
    assert "terminationGracePeriodSeconds" in record.getMessage()


def test_check_signals_names_a_value_that_is_not_a_signal() -> None:
    check_signals([15, 2])
    with pytest.raises(ConfigError, match="signals: 999 is not a signal"):
        check_signals([15, 999])


def test_check_names_same_name_for_a_server_and_a_resource_is_an_error() -> None:
    with pytest.raises(ConfigError, match="resource name 'db' is already a server"):
        check_names([Part("db")], [Part("db")])


def test_check_names_server_may_depend_on_a_resource_but_not_the_reverse() -> None:
    check_names([Part("http", ("db",))], [Part("db")])
    with pytest.raises(ConfigError, match="'db' depends on unknown 'http'"):
        check_names([Part("http")], [Part("db", ("http",))])


def test_check_names_cycle_names_the_cycle() -> None:
    with pytest.raises(DependencyCycleError, match="dependency cycle: a -> b -> a"):
        check_names([Part("a", ("b",)), Part("b", ("a",))], [])


def test_check_identity_needs_a_name_and_a_string_version() -> None:
    check_identity("orders", "1.2.3")
    with pytest.raises(ConfigError, match="name=None: an app needs a name"):
        check_identity(None, "1")
    with pytest.raises(ConfigError, match=r"version=1\.2: must be a string"):
        check_identity("orders", 1.2)


def test_check_registry_takes_none_a_url_or_a_registry(tmp_path: Path) -> None:
    check_registry(None)
    check_registry("etcd://127.0.0.1:2379")
    check_registry(FileRegistry(tmp_path))
    with pytest.raises(ConfigError, match=r"registry: dict is neither a URL nor"):
        check_registry({"url": "etcd://127.0.0.1:2379"})


def test_the_budget_line_adds_each_stop_hooks_own_timeout() -> None:
    from quiesce import App

    app = App(name="svc", stop_timeout=10, hook_timeout=2, cleanup_reserve=1)

    @app.before_stop(timeout=6)
    def flush() -> None:
        pass

    @app.after_stop
    def close() -> None:
        pass

    line = app.check()
    assert "hooks 8s" in line  # 6 of its own + the app's 2, not 2 x 2
