"""``quiesce drill``'s options: a bad one is exit 2 and one line; the defaults are the issue's."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from drill.run import SHORT, drill, python_command
from quiesce.cli import main
from quiesce.drill.command import command
from quiesce.drill.options import DrillOptions

UVICORN = python_command(
    "-m", "uvicorn", "--app-dir", "tests/drill", "plain:app", "--port", "{port}"
)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give either a TARGET"),
        (["app:app", "--command", UVICORN], "give either a TARGET"),
        (["--command", "uvicorn app:app"], "must contain {port}"),
        (["--command", "uvicorn 'app:app --port {port}"], "No closing quotation"),
        (["app:app", "--clients", "0"], "--clients"),
        (["app:app", "--duration", "nan"], "--duration"),
        (["app:app", "--duration", "inf"], "--duration"),
        # A load of more than a day is no bounded loop: the rule every duration is held to.
        (["app:app", "--duration", "1e6"], "must be at most 86400 seconds"),
        (["app:app", "--signal-at", "-1"], "--signal-at"),
        (["app:app", "--duration", "2", "--signal-at", "2"], "must come before the end"),
        (["app:app", "--retries", "-1"], "--retries"),
        (["app:app", "--notice-delay", "x"], "--notice-delay"),
        (["app:app", "--path", "orders"], "--path 'orders': must be a path"),
        (["app:app", "--instances", "3", "--registry", "redis://x"], "unknown registry scheme"),
        (["app:app", "--registry", "file:"], "--registry is for --instances 2 or more"),
        (["app:app", "--html", "/no/such/dir/x.html"], "is not a directory"),
        (["app:app", "--no-such-option"], "No such option"),
    ],
)
def test_drill_bad_option_is_exit_2_and_one_line(args: list[str], says: str) -> None:
    # In-process, through the real ``quiesce`` group: nothing here starts a service.
    result = CliRunner().invoke(main, ["drill", *args], prog_name="quiesce")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quiesce drill: ")
    assert says in lines[0]


def test_drill_unimportable_target_is_the_services_exit_2_in_one_line() -> None:
    result = drill("tests/drill/no_such_module.py:app", *SHORT)
    assert result.code == 2, result
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "quiesce drill: the service 'tests/drill/no_such_module.py:app' exited 2"
    )
    assert "no_such_module" in line.split("exited 2", 1)[1]  # the service's own reason
    assert "Traceback" not in result.stderr


def test_drill_path_the_service_does_not_serve_is_exit_2() -> None:
    # The demo has no route at /: every request would be a 404, a bad option, not a finding.
    env = {"SHOP_GRPC_PORT": "0", "SHOP_GATEWAY_PORT": "0"}
    result = drill("examples/shop/main.py:app", *SHORT, env=env)
    assert result.code == 2, result
    last = result.stderr.splitlines()[-1]
    assert last == (
        "quiesce drill: --path /: the service answers 404 before any signal; give a path it serves"
    )


def test_drill_defaults_are_the_issues_and_the_commands() -> None:
    defaults = {p.name: p.default for p in command.params}
    assert defaults["clients"] == DrillOptions.clients == 50
    assert defaults["duration"] == DrillOptions.duration == 10.0
    assert defaults["signal_at"] == DrillOptions.signal_at == 3.0
    assert defaults["path"] == DrillOptions.path == "/"
    assert defaults["instances"] == DrillOptions.instances == 1
    assert DrillOptions.registry is None  # a private file registry
    assert defaults["retries"] == DrillOptions.retries == 0  # no retries: what most callers are
    assert defaults["notice_delay"] == DrillOptions.notice_delay == 1.0
    assert defaults["ready_timeout"] == DrillOptions.ready_timeout == 30.0
    assert defaults["exit_timeout"] == DrillOptions.exit_timeout == 60.0
    assert defaults["request_timeout"] == DrillOptions.request_timeout == 10.0
