"""Where each option comes from: flag > env > file > the App's own argument > default.

Shown through ``--print-config`` (each line: the option, its value, its
source) run in this process with click's CliRunner, in a tmp_path cwd;
``--check-config`` prints the stop budget and exits 0.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pytest

from quiesce.cli.options import OPTIONS

from .conftest import HERE, Cli

LINE = re.compile(r"(\w+) +(.*?) +\(([^()]*)\)")


def printed(cli: Cli, *args: str, env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """``--print-config``'s lines: option -> (value as printed, source)."""
    result = cli(*args, "--print-config", env=env)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    found = {}
    for line in lines:
        match = LINE.fullmatch(line)
        assert match is not None, line
        found[match[1]] = (match[2], match[3])
    assert len(found) == len(lines)
    return found


@dataclass(frozen=True)
class Case:
    """An option set to a value that is not its default, in each form it can be written."""

    name: str
    text: str  # as a flag's value and an environment variable
    toml: str  # as a TOML value
    shown: str  # as --print-config prints it
    flag: tuple[str, ...] = ()  # the flag form, when it is not ``--name TEXT``
    also: tuple[str, ...] = ()  # other flags the option needs
    target: str = "svc:asgi"


CASES = [
    Case("target", "svc:asgi", '"svc:asgi"', "svc:asgi", flag=("svc:asgi",)),
    Case("factory", "true", "true", "True", flag=("--factory",), target="svc:make"),
    Case("app_dir", "sub", '"sub"', "sub"),
    Case("host", "127.0.0.2", '"127.0.0.2"', "127.0.0.2"),
    Case("port", "8123", "8123", "8123"),
    Case("grpc", "svc:grpc_factory", '"svc:grpc_factory"', "svc:grpc_factory"),
    Case("grpc_port", "50999", "50999", "50999", also=("--grpc", "svc:grpc_factory")),
    Case("admin_port", "9191", "9191", "9191"),
    Case("registry", "etcd://127.0.0.1:2379", '"etcd://127.0.0.1:2379"', "etcd://127.0.0.1:2379"),
    Case("name", "orders", '"orders"', "orders"),
    Case("drain_delay", "2.5", "2.5", "2.5"),
    Case(
        "drain_delay",
        "min=0.5,max=3",
        '"min=0.5,max=3"',
        "Drain(min=0.5, max=3.0, idle=0.5)",
    ),
    Case("stop_timeout", "12", "12", "12.0"),
    Case("start_timeout", "7", "7", "7.0"),
    Case("hook_timeout", "3", "3.0", "3.0"),
    Case("grace_period", "45", "45", "45.0"),
    Case("workers", "4", "4", "4"),
    Case("reload_batch", "2", "2", "2"),
    Case("log_level", "DEBUG", '"debug"', "debug"),
    Case("access_log", "off", "false", "False", flag=("--no-access-log",)),
    Case("engine", "GRANIAN", '"granian"', "granian"),
    Case("report_json", "out.json", '"out.json"', "out.json"),
]
SOURCES = ["flag", "env", "quiesce.toml", "pyproject.toml", "--config", "QUIESCE_CONFIG"]


def test_cases_cover_every_option_a_user_can_set() -> None:
    settable = {o.name for o in OPTIONS if not o.action and o.name != "config"}
    assert {case.name for case in CASES} == settable


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_print_config_every_option_from_every_source(cli: Cli, case: Case, source: str) -> None:
    cli.write("sub/svc.py", (cli.folder / "svc.py").read_text())  # for app_dir = "sub"
    args: list[str] = [] if case.name == "target" and source != "flag" else [case.target]
    env: dict[str, str] = {}
    option = f"--{case.name.replace('_', '-')}"
    line = f"{case.name} = {case.toml}\n"
    expected = {
        "flag": "flag",
        "env": f"env QUIESCE_{case.name.upper()}",
        "quiesce.toml": "file quiesce.toml",
        "pyproject.toml": "file pyproject.toml",
        "--config": "file conf/other.toml",
        "QUIESCE_CONFIG": "file conf/other.toml",
    }[source]
    if source == "flag":
        args = [*args, *(case.flag or (option, case.text))] if case.name != "target" else args
    elif source == "env":
        env[f"QUIESCE_{case.name.upper()}"] = case.text
    elif source == "quiesce.toml":
        cli.write("quiesce.toml", line)
    elif source == "pyproject.toml":
        cli.write("pyproject.toml", f'[project]\nname = "x"\n\n[tool.quiesce]\n{line}')
    else:
        cli.write("conf/other.toml", line)
        if source == "--config":
            args += ["--config", "conf/other.toml"]
        else:
            env["QUIESCE_CONFIG"] = "conf/other.toml"
    shown = printed(cli, *args, *case.also, env=env)
    assert shown[case.name] == (case.shown, expected)
    # Everything else is untouched: the default, or the one other flag the case needed.
    for other in OPTIONS:
        if other.action or other.name in (case.name, "target", "grpc", "name", "config"):
            continue
        assert shown[other.name] == (str(other.default), "default"), other.name


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        (("flag", "env", "file"), ("1.0", "flag")),
        (("flag", "file"), ("1.0", "flag")),
        (("env", "file"), ("2.0", "env QUIESCE_STOP_TIMEOUT")),
        (("file",), ("3.0", "file quiesce.toml")),
        ((), None),
    ],
)
@pytest.mark.parametrize(
    ("target", "unset"), [("svc:asgi", ("30.0", "default")), ("svc:own", ("12.0", "app"))]
)
def test_print_config_flag_beats_env_beats_file_beats_app_beats_default(
    cli: Cli,
    given: tuple[str, ...],
    shown: tuple[str, str] | None,
    target: str,
    unset: tuple[str, str],
) -> None:
    args = [target, "--stop-timeout", "1"] if "flag" in given else [target]
    env = {"QUIESCE_STOP_TIMEOUT": "2"} if "env" in given else {}
    if "file" in given:
        cli.write("quiesce.toml", "stop_timeout = 3\n")
    assert printed(cli, *args, env=env)["stop_timeout"] == (shown or unset)


@pytest.mark.parametrize(
    ("files", "config", "env", "shown"),
    [
        (("a", "b", "quiesce", "pyproject"), "a.toml", "b.toml", ("1.0", "file a.toml")),
        (("a", "b", "quiesce", "pyproject"), None, "b.toml", ("2.0", "file b.toml")),
        (("a", "b", "quiesce", "pyproject"), None, None, ("3.0", "file quiesce.toml")),
        (("a", "b", "pyproject"), None, None, ("4.0", "file pyproject.toml")),
        (("a", "b", "bare-pyproject"), None, None, ("30.0", "default")),
        # One file is read, never merged: a quiesce.toml without the key hides pyproject's.
        (("empty-quiesce", "pyproject"), None, None, ("30.0", "default")),
        (("pyproject",), "pyproject.toml", None, ("4.0", "file pyproject.toml")),
    ],
)
def test_print_config_config_flag_beats_env_beats_quiesce_toml_beats_pyproject(
    cli: Cli, files: tuple[str, ...], config: str | None, env: str | None, shown: tuple[str, str]
) -> None:
    contents = {
        "a": ("a.toml", "stop_timeout = 1\n"),
        "b": ("b.toml", "stop_timeout = 2\n"),
        "quiesce": ("quiesce.toml", "stop_timeout = 3\n"),
        "empty-quiesce": ("quiesce.toml", "port = 9000\n"),
        "pyproject": ("pyproject.toml", "[tool.quiesce]\nstop_timeout = 4\n"),
        "bare-pyproject": ("pyproject.toml", '[project]\nname = "x"\n'),
    }
    for name in files:
        cli.write(*contents[name])
    args = ["svc:asgi", *(["--config", config] if config else [])]
    environ = {"QUIESCE_CONFIG": env} if env else {}
    assert printed(cli, *args, env=environ)["stop_timeout"] == shown


#: What ``svc:own`` sets itself (see conftest's SVC), as --print-config shows it.
OWN = {
    "name": "own",
    "drain_delay": "1.5",
    "stop_timeout": "12.0",
    "start_timeout": "7.0",
    "hook_timeout": "2.0",
    "grace_period": "40.0",
    "registry": "etcd://127.0.0.1:2380",
    "report_json": "own.json",
    # Its HTTP server's own.
    "host": "127.0.0.3",
    "port": "8124",
}


def test_print_config_app_target_shows_what_the_app_sets_as_app(cli: Cli) -> None:
    shown = printed(cli, "svc:own")
    assert {name: shown[name] for name in OWN} == {name: (v, "app") for name, v in OWN.items()}
    # What it does not set is the default, and says so.
    assert shown["log_level"] == ("info", "default")


@pytest.mark.parametrize("source", ["flag", "env", "file"])
@pytest.mark.parametrize("case", [c for c in CASES if c.name in OWN], ids=lambda c: c.name)
def test_print_config_user_source_overrides_the_apps_own_option(
    cli: Cli, case: Case, source: str
) -> None:
    args = ["svc:own"]
    env = {}
    if source == "flag":
        args += [f"--{case.name.replace('_', '-')}", case.text]
    elif source == "env":
        env[f"QUIESCE_{case.name.upper()}"] = case.text
    else:
        cli.write("quiesce.toml", f"{case.name} = {case.toml}\n")
    name, where = printed(cli, *args, env=env)[case.name]
    assert name == case.shown
    assert where.split()[0] == source


def test_check_config_flags_change_the_app_itself(cli: Cli) -> None:
    result = cli("svc:own", "--check-config", "--port", "9000", "--stop-timeout", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ok: svc:own would serve http (http://127.0.0.3:9000)",
        "stop budget: drain 1.5s + server stop 2.5s + hooks 2s + cleanup reserve 1s = 7s, "
        "at most stop_timeout=5s; grace period 40s: fits",
    ]


def test_check_config_defaults_fit_the_kubernetes_grace_period(cli: Cli) -> None:
    result = cli("svc:asgi", "--check-config")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ok: svc:asgi would serve http (http://127.0.0.1:8000)",
        "stop budget: drain 0s + server stop 25s + hooks 0s + cleanup reserve 5s = 30s, "
        "at most stop_timeout=30s; grace period 30s: fits",
    ]


def test_check_config_budget_over_the_grace_period_is_exit_0_with_a_warning(
    cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    result = cli(
        "svc:asgi", "--check-config", "--drain-delay", "2", "--stop-timeout", "10",
        "--grace-period", "8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    budget = (
        "stop budget: drain 2s + server stop 6s + hooks 0s + cleanup reserve 2s = 10s, "
        "at most stop_timeout=10s; grace period 8s: does NOT fit"
    )
    assert result.stdout.splitlines()[1] == budget
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("stop_timeout=10.0s exceeds the grace period (8.0s") for m in warned)


def test_check_config_app_dir_is_where_the_module_is_found(cli: Cli) -> None:
    folder = str(HERE / "appdir")
    missing = cli("cli_appdir_target:app", "--check-config")
    assert missing.exit_code == 2
    assert missing.stderr == (
        "quiesce: TARGET (flag): 'cli_appdir_target': no module named 'cli_appdir_target'\n"
    )
    found = cli("cli_appdir_target:app", "--app-dir", folder, "--check-config")
    assert found.exit_code == 0, found.output


def test_print_config_asgi_target_is_named_after_its_module(cli: Cli) -> None:
    cli.write("pkg/mod.py", "from svc import asgi\n")
    assert printed(cli, "svc:asgi")["name"] == ("svc", "default")
    assert printed(cli, "pkg/mod.py:asgi")["name"] == ("mod", "default")


def test_print_config_dotted_module_target_is_named_like_its_file(cli: Cli) -> None:
    cli.write("pkg/sub/mod.py", "from svc import asgi\n")
    by_file = printed(cli, "pkg/sub/mod.py:asgi")["name"]
    assert printed(cli, "pkg.sub.mod:asgi")["name"] == by_file == ("mod", "default")


def test_print_config_masks_the_registry_password(cli: Cli) -> None:
    url = "etcd://alice:s3cret@127.0.0.1:2379"
    assert printed(cli, "svc:asgi", "--registry", url)["registry"] == (
        "etcd://alice:***@127.0.0.1:2379",
        "flag",
    )


def test_check_config_admin_port_adds_the_admin_server(cli: Cli) -> None:
    result = cli("svc:asgi", "--admin-port", "9191", "--check-config")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "ok: svc:asgi would serve http (http://127.0.0.1:8000), admin (http://127.0.0.1:9191)"
    )


def test_a_misspelt_variable_is_warned_about_and_changes_nothing(
    cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"QUIESCE_STOP_TIMOUT": "3", "QUIESCE_SLOW": "1"}  # a typo, and another tool's own
    with caplog.at_level(logging.WARNING, logger="quiesce.cli"):
        shown = printed(cli, "svc:asgi", env=env)
    assert shown["stop_timeout"] == ("30.0", "default")
    assert [r.getMessage() for r in caplog.records if r.name == "quiesce.cli"] == [
        "environment QUIESCE_STOP_TIMOUT is not a quiesce option "
        "(did you mean QUIESCE_STOP_TIMEOUT?)"
    ]


def test_server_options_go_to_the_http_server_named_http_beside_others(cli: Cli) -> None:
    cli.write(
        "two_named.py",
        "from quiesce import App, HTTPServer\n"
        "from svc import asgi\n"
        "app = App(name='x', servers=[HTTPServer(asgi, name='http', port=8123),\n"
        "                             HTTPServer(asgi, name='gateway', port=8124)])\n",
    )
    result = cli("two_named:app", "--port", "9000", "--check-config")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert "http (http://127.0.0.1:9000)" in first
    assert "gateway (http://127.0.0.1:8124)" in first
