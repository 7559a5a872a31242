"""``quiesce run`` as users run it: a real process serves real HTTP and stops clean on SIGTERM.

Each target kind (an App, a bare ASGI app, sync and async factories of
either, a file path, a module found through ``--app-dir``) is started as
``python -m quiesce`` or as the console script, awaited on its own
``/readyz``, asked for ``/``, sent a real SIGTERM, and judged by its exit
code, its ``--report-json`` and its stderr.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import pytest

from conftest import free_ports

from .proc import TESTS, Quiesce, Start, stop_outcomes

ACCESS = '"GET / HTTP/1.1" 200'


def served(
    start: Start,
    report: Path,
    args: list[str],
    body: bytes,
    *,
    access_log: bool | None = True,
    **kwargs: object,
) -> Quiesce:
    """``quiesce run ARGS --port P --report-json REPORT``: serves ``body``, stops clean on SIGTERM.

    ``access_log``: whether a ``uvicorn.access`` line for the request must be
    on stderr (None: not judged).
    """
    (port,) = free_ports(1)
    proc = start([*args, "--port", str(port), "--report-json", str(report)], **kwargs)
    proc.until_ready(port)
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5.0)
    assert (response.status_code, response.content) == (200, body), proc
    assert proc.terminate() == 0, proc
    stop = stop_outcomes(report)
    assert stop["stop_servers"] == "ok", stop
    assert (stop["_"]["reason"], stop["_"]["exit_code"]) == ("signal SIGTERM", 0)
    assert "Traceback" not in proc.stderr + proc.stdout
    # The stop report on the terminal, not only in the file.
    assert "exit 0 (clean), stop after signal SIGTERM" in proc.stderr, proc
    assert any(
        " stop_servers " in line and line.endswith(" ok") for line in proc.stderr.splitlines()
    )
    if access_log is not None:
        logged = [line for line in proc.stderr.splitlines() if "uvicorn.access" in line]
        assert any(ACCESS in line for line in logged) is access_log, proc
    return proc


@pytest.mark.parametrize(
    ("args", "body", "name", "console"),
    [
        pytest.param(["cli.targets:app"], b"app", "cli-app", False, id="app"),
        pytest.param(["cli.targets:asgi"], b"asgi", None, True, id="asgi-console-script"),
        pytest.param(
            ["cli.targets:make_app", "--factory"], b"sync factory app", "made-sync", True,
            id="sync-factory-app",
        ),
        pytest.param(
            ["cli.targets:make_asgi", "--factory"], b"sync factory asgi", None, False,
            id="sync-factory-asgi",
        ),
        pytest.param(
            ["cli.targets:amake_app", "--factory"], b"async factory app", "made-async", False,
            id="async-factory-app",
        ),
        pytest.param(
            ["cli.targets:amake_asgi", "--factory"], b"async factory asgi", None, True,
            id="async-factory-asgi",
        ),
        pytest.param(
            [f"{TESTS}/cli/targets.py:app"], b"app", "cli-app", False, id="absolute-file-path"
        ),
        pytest.param(
            ["cli_appdir_target:app", "--app-dir", str(TESTS / "cli" / "appdir")],
            b"from app-dir", "cli_appdir_target", True, id="app-dir",
        ),
    ],
)  # fmt: skip
def test_run_target_serves_then_stops_clean_on_sigterm(
    quiesce: Start, tmp_path: Path, args: list[str], body: bytes, name: str | None, console: bool
) -> None:
    served(quiesce, tmp_path / "report.json", args, body, console=console)
    if name is not None:  # the App's own name (an ASGI app's is the module's: test_sources)
        assert stop_outcomes(tmp_path / "report.json")["_"]["app"] == name


def test_run_relative_file_path_target_is_found_from_the_cwd(
    quiesce: Start, tmp_path: Path
) -> None:
    served(quiesce, tmp_path / "report.json", ["cli/targets.py:asgi"], b"asgi", cwd=TESTS)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["cli.targets:app", "--no-access-log"], {}, id="flag-on-an-app"),
        pytest.param(["cli.targets:asgi"], {"QUIESCE_ACCESS_LOG": "off"}, id="env-on-asgi"),
    ],
)
def test_run_no_access_log_serves_without_access_lines(
    quiesce: Start, tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    body = args[0].rpartition(":")[2].encode()
    served(quiesce, tmp_path / "report.json", args, body, access_log=False, env=env)


@pytest.mark.parametrize("how", ["setLevel", "basicConfig"])
def test_run_stop_report_reaches_stderr_when_the_target_turns_logging_to_warning(
    quiesce: Start, tmp_path: Path, how: str
) -> None:
    env = {"CLI_TEST_LOGGING": how}
    proc = served(
        quiesce, tmp_path / "r.json", ["cli.quiet:app"], b"quiet", access_log=None, env=env
    )
    # The target's WARNING level held: the lifecycle's INFO lines are gone, the report is not.
    assert "quiesce.lifecycle: stop phase=" not in proc.stderr, proc


def test_run_admin_port_serves_metrics_beside_the_app(quiesce: Start, tmp_path: Path) -> None:
    port, admin = free_ports(2)
    report = tmp_path / "report.json"
    args = ["cli.targets:asgi", "--port", str(port), "--admin-port", str(admin)]
    proc = quiesce([*args, "--report-json", str(report)])
    proc.until_ready(port)
    proc.until_ready(admin)
    metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5.0)
    assert metrics.status_code == 200
    assert 'quiesce_lifecycle_state{state="running"} 1.0' in metrics.text
    assert proc.terminate() == 0, proc
    assert stop_outcomes(report)["stop_servers"] == "ok"


def test_check_config_validates_without_binding_a_port(quiesce: Start) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        target = ["cli.targets:app", "--port", port]
        # The run itself cannot bind the held port: a check that bound would fail like this.
        run = quiesce(target)
        assert run.wait() == 1, run
        assert f"127.0.0.1:{port}" in run.stderr
        good = quiesce([*target, "--check-config"])
        assert good.wait() == 0, good
        assert good.stdout.splitlines() == [
            f"ok: cli.targets:app would serve http (http://127.0.0.1:{port})",
            "stop budget: drain 0s + server stop 25s + hooks 0s + cleanup reserve 5s = 30s, "
            "at most stop_timeout=30s; grace period 30s: fits",
        ]
        # Found by the App's own check, after the servers were built.
        bad = quiesce([*target, "--drain-delay", "40", "--check-config"])
        assert bad.wait() == 2, bad
        assert bad.stderr.splitlines() == [
            "quiesce: --drain-delay (flag): drain_delay=40.0s does not fit stop_timeout=30.0s "
            "with 5.0s kept for after_stop and resources"
        ]
        assert bad.stdout == ""


def test_app_run_with_a_typo_in_a_keyword_is_exit_2_and_one_line(quiesce: Start) -> None:
    proc = quiesce([], command=[sys.executable, str(TESTS / "cli" / "typo_run.py")])
    assert proc.wait() == 2, proc
    (line,) = proc.stderr.splitlines()
    assert line.endswith("App(drain_dealy=1): unknown option (did you mean drain_delay?)"), line
    assert proc.stdout == ""


BOOM = "import os\nraise RuntimeError(os.sep + ' is not a database')\n"


@pytest.mark.parametrize(
    ("args", "env", "console", "line"),
    [
        (["boom:app"], {}, False, "quiesce: TARGET (flag): 'boom:app': importing boom failed: "
         "RuntimeError: / is not a database (boom.py:2)"),
        (["cli.targets:broken_factory", "--factory"], {}, True, "quiesce: TARGET (flag): "
         "'cli.targets:broken_factory' (--factory): it raised RuntimeError: the database is not "
         "there ("),
        (["nosuch:app"], {}, True, "quiesce: TARGET (flag): 'nosuch': no module named 'nosuch'"),
        (["cli.targets:asgi", "--frobnicate"], {}, True,
         "quiesce run: No such option '--frobnicate'."),
        (["cli.targets:asgi"], {"QUIESCE_STOP_TIMEOUT": "nan"}, False,
         "quiesce: --stop-timeout (env QUIESCE_STOP_TIMEOUT): 'nan': must be a positive number "
         "of seconds, at most 86400"),
        (["cli.targets:asgi", "--config", "bad.toml"], {}, False,
         "quiesce: config file bad.toml: not valid TOML: "),
        # Found by the App's own validation, before the run: named with its source.
        (["cli.targets:asgi", "--registry", "zk://x"], {}, True, "quiesce: --registry (flag): "
         "registry 'zk://x': unknown registry scheme 'zk'"),
    ],
)  # fmt: skip
def test_run_bad_input_is_exit_2_and_one_line_on_the_real_stderr(
    quiesce: Start,
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    console: bool,
    line: str,
) -> None:
    (tmp_path / "boom.py").write_text(BOOM)
    (tmp_path / "bad.toml").write_text("port = [\n")
    proc = quiesce(args, env=env, console=console)
    assert proc.wait() == 2, proc
    assert proc.stdout == ""
    (got,) = proc.stderr.splitlines()
    assert line in got, got


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["cli.targets:app", "--engine", "granian"], {}, id="flag-on-an-app"),
        pytest.param(["cli.targets:asgi"], {"QUIESCE_ENGINE": "granian"}, id="env-on-asgi"),
    ],
)
def test_run_engine_granian_serves_on_granian_and_stops_clean(
    quiesce: Start, tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    (port,) = free_ports(1)
    report = tmp_path / "report.json"
    proc = quiesce([*args, "--port", str(port), "--report-json", str(report)], env=env)
    proc.until_ready(port)
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5.0)
    assert response.status_code == 200, proc
    assert response.headers["server"] == "granian"  # uvicorn's says "uvicorn"
    assert proc.terminate() == 0, proc
    assert stop_outcomes(report)["stop_servers"] == "ok"
