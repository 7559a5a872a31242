"""Bad input of any kind: exit 2, exactly one line naming the option and its source, no traceback.

In this process through CliRunner, always with ``--check-config`` so that a
case that wrongly passed could not start serving here; ``test_run`` proves a
handful on a real process's stderr. Durations, ports and registry URLs are
also generated with hypothesis: what is not valid is refused in one line,
what is valid is accepted.
"""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
from click.testing import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Cli

#: Modules some cases import, written into the tmp_path cwd next to svc.py.
MODULES = {
    "boom.py": "import os\nraise RuntimeError(os.sep + ' is not a database')\n",
    "jsonboom.py": "import json\njson.loads('{')\n",
    "exits.py": "raise SystemExit(3)\n",
}


def case(
    args: list[str],
    *wants: str,
    env: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
    bug: str | None = None,
) -> Any:
    """One bad input: ``quiesce run ARGS`` (with env and files) must say each of ``wants``.

    ``bug``: it does not yet; strict xfail with that reason.
    """
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    named = " ".join([*args, *(env or {}), *(files or {})])
    return pytest.param(args, env or {}, files or {}, wants, marks=marks, id=named or "nothing")


def toml(text: str, *wants: str, name: str = "quiesce.toml", **kwargs: Any) -> Any:
    return case(["svc:asgi"], *wants, files={name: text}, **kwargs)


A = "svc:asgi"
NO_SOURCE = "names the App's argument, not the option and its source (flag / env / file)"
CASES = [
    # -- the command line itself
    case([A, "--frobnicate"], "No such option '--frobnicate'"),
    case([A, "--stop-timout", "3"], "'--stop-timout'", "'--stop-timeout'?"),
    case([A, "--port"], "'--port' requires an argument"),
    case([A, "extra"], "unexpected extra argument (extra)"),
    case([], "TARGET: missing"),
    case(["svc"], "TARGET (flag): 'svc'"),
    case(["svc:"], "(flag): 'svc:'", "must be module:attribute"),
    # -- numbers that are not, and timeouts no wait can honour
    case([A, "--stop-timeout", "soon"], "--stop-timeout (flag): 'soon'"),
    case([A, "--stop-timeout", "-1"], "--stop-timeout (flag): '-1'"),
    case([A, "--stop-timeout", "0"], "--stop-timeout (flag): '0'"),
    case([A, "--stop-timeout", "inf"], "--stop-timeout (flag): 'inf'"),
    case([A, "--stop-timeout", "nan"], "--stop-timeout (flag): 'nan'"),
    case([A, "--stop-timeout", "1e9"], "--stop-timeout (flag): '1e9'", "at most 86400"),
    case([A, "--stop-timeout", "0x10"], "--stop-timeout (flag): '0x10'"),
    case([A, "--start-timeout", "-0.5"], "--start-timeout (flag): '-0.5'"),
    case([A, "--hook-timeout", ""], "--hook-timeout (flag): ''"),
    case([A, "--grace-period", "Infinity"], "--grace-period (flag): 'Infinity'"),
    # -- ports
    case([A, "--port", "65536"], "--port (flag): '65536'", "from 0 to 65535"),
    case([A, "--port", "-1"], "--port (flag): '-1'"),
    case([A, "--port", "80.0"], "--port (flag): '80.0'"),
    case([A, "--port", "http"], "--port (flag): 'http'"),
    case(
        [A, "--port", "\N{SUPERSCRIPT TWO}"],
        "--port (flag): '\N{SUPERSCRIPT TWO}': must be an integer from 0 to 65535",
    ),
    case([A, "--admin-port", "1e3"], "--admin-port (flag): '1e3'"),
    case([A, "--grpc", "svc:grpc_factory", "--grpc-port", "99999"], "--grpc-port (flag): '99999'"),
    # -- the drain delay, both forms
    case([A, "--drain-delay", "x"], "--drain-delay (flag): 'x'"),
    case([A, "--drain-delay", "-1"], "--drain-delay (flag): '-1'"),
    case([A, "--drain-delay", "min=3,max=1"], "(flag): 'min=3,max=1': min must not exceed max"),
    case([A, "--drain-delay", "min=1,colour=2"], "--drain-delay (flag): 'min=1,colour=2'"),
    case([A, "--drain-delay", "min=1,max"], "--drain-delay (flag): 'min=1,max'"),
    case([A, "--drain-delay", "max=inf"], "--drain-delay (flag): 'max=inf'"),
    case([A, "--drain-delay", "idle=0"], "--drain-delay (flag): 'idle=0'"),
    case([A, "--drain-delay", "40"], "--drain-delay (flag)", "stop_timeout"),
    # -- words
    case([A, "--log-level", "loud"], "--log-level (flag): 'loud'", "debug"),
    case([A, "--name", "  "], "--name (flag): '  '"),
    case([A, "--host", ""], "--host (flag): ''"),
    case([A, "--report-json", "/nonexistent/r.json"], "--report-json (flag)"),
    # -- registry URLs
    case([A, "--registry", "nocolon"], "--registry (flag): 'nocolon'"),
    case([A, "--registry", "zk://x"], "unknown registry scheme 'zk'"),
    case([A, "--registry", "zk://x"], "--registry (flag)"),
    case([A], "--registry (env QUIESCE_REGISTRY)", env={"QUIESCE_REGISTRY": "zk://x"}),
    case([A, "--registry", "etcd://127.0.0.1:99999"], "bad port in '127.0.0.1:99999'"),
    # -- the environment
    case([A], "(env QUIESCE_STOP_TIMEOUT): 'soon'", env={"QUIESCE_STOP_TIMEOUT": "soon"}),
    case([A], "--port (env QUIESCE_PORT): 'http'", env={"QUIESCE_PORT": "http"}),
    case([A], "(env QUIESCE_ACCESS_LOG): 'maybe'", env={"QUIESCE_ACCESS_LOG": "maybe"}),
    case(["svc:make"], "--factory (env QUIESCE_FACTORY): '2'", env={"QUIESCE_FACTORY": "2"}),
    case([A], "(env QUIESCE_LOG_LEVEL): 'verbose'", env={"QUIESCE_LOG_LEVEL": "verbose"}),
    case([A], "(env QUIESCE_DRAIN_DELAY): 'min=a'", env={"QUIESCE_DRAIN_DELAY": "min=a"}),
    case([A], "(env QUIESCE_GRACE_PERIOD): '-inf'", env={"QUIESCE_GRACE_PERIOD": "-inf"}),
    case([], "TARGET (env QUIESCE_TARGET): 'nosuch'", env={"QUIESCE_TARGET": "nosuch:app"}),
    # -- the target
    case(["nosuch:app"], "TARGET (flag): 'nosuch': no module named 'nosuch'"),
    case(["svc.nosuch:app"], "TARGET (flag)", "no module named 'svc.nosuch'"),
    case(["boom:app"], "TARGET (flag)", "RuntimeError: / is not a database (boom.py:2)"),
    case(
        ["jsonboom:app"],
        "TARGET (flag)",
        "JSONDecodeError",
        "(jsonboom.py:2)",
    ),
    case(["exits:app"], "TARGET (flag): 'exits:app': importing exits exited with 3"),
    case(["svc:nope"], "TARGET (flag): 'svc:nope': svc has no attribute 'nope'"),
    case(["svc:asgi.nope"], "TARGET (flag)", "no attribute 'asgi.nope'"),
    case(["nofile.py:app"], "TARGET (flag): 'nofile.py': no such file"),
    case(["svc:number"], "TARGET (flag)", "neither an App nor an ASGI app"),
    case(["svc:sync_handler"], "TARGET (flag)", "is a function, neither an App nor an ASGI app"),
    case(["svc:number", "--factory"], "TARGET (flag)", "(--factory): int is not callable"),
    case(["svc:broken_factory", "--factory"], "TARGET (flag)", "RuntimeError: the database is not"),
    case(["svc:needs_args", "--factory"], "TARGET (flag)", "(--factory): calling it failed"),
    case(["svc:returns_number", "--factory"], "TARGET (flag)", "neither an App nor an ASGI app"),
    case([A, "--factory"], "TARGET (flag)", "(--factory): calling it failed"),
    case(["svc:typo"], "App(drain_dealy=1): unknown option (did you mean drain_delay?)"),
    # -- options that name a server the app does not have (or two)
    case(["svc:two", "--port", "9000"], "--port (flag): the app has 2 HTTP servers (a, b)"),
    case(["svc:two"], "--host (env QUIESCE_HOST): the app has 2", env={"QUIESCE_HOST": "::1"}),
    case([A, "--grpc-port", "5000"], "--grpc-port (flag): the app has 0 gRPC servers"),
    case([A], "--grpc-port (env QUIESCE_GRPC_PORT)", env={"QUIESCE_GRPC_PORT": "5000"}),
    case([A, "--grpc", "nosuch:server"], "--grpc (flag): 'nosuch': no module named"),
    case([A, "--grpc", "svc:number"], "--grpc (flag)"),
    # -- config files
    case([A, "--config", "missing.toml"], "--config (flag): 'missing.toml': no such file"),
    case([A], "(env QUIESCE_CONFIG): 'gone.toml'", env={"QUIESCE_CONFIG": "gone.toml"}),
    toml("port = [\n", "config file quiesce.toml: not valid TOML"),
    toml("stop_timout = 3\n", "'stop_timout' is not an option (did you mean 'stop_timeout'?)"),
    toml('colour = "red"\n', "config file quiesce.toml: 'colour' is not an option"),
    toml("print_config = true\n", "'print_config' is set on the command line only"),
    toml('stop_timeout = "abc"\n', "--stop-timeout (file quiesce.toml): 'abc'"),
    toml("stop_timeout = true\n", "--stop-timeout (file quiesce.toml): True"),
    toml("stop_timeout = inf\n", "--stop-timeout (file quiesce.toml): inf"),
    toml("hook_timeout = nan\n", "--hook-timeout (file quiesce.toml): nan"),
    toml("port = 80.5\n", "--port (file quiesce.toml): 80.5"),
    toml("access_log = 2\n", "--access-log (file quiesce.toml): 2"),
    toml("drain_delay = {min = 1}\n", "--drain-delay (file quiesce.toml)"),
    toml(
        "[tool]\nquiesce = 3\n",
        "pyproject.toml: [tool.quiesce] must be a table",
        name="pyproject.toml",
    ),
    toml("[tool\n", "config file pyproject.toml: not valid TOML", name="pyproject.toml"),
    toml(
        "[tool.quiesce]\nstop_timout = 3\n",
        "pyproject.toml: 'stop_timout' is not an option (did you mean 'stop_timeout'?)",
        name="pyproject.toml",
    ),
    case([A, "--config", "o.toml"], "config file o.toml: not valid TOML", files={"o.toml": "= 1"}),
    case(
        [A],
        "--port (file o.toml): 'x'",
        env={"QUIESCE_CONFIG": "o.toml"},
        files={"o.toml": 'port = "x"'},
    ),
    case([], "(file quiesce.toml): 3", files={"quiesce.toml": "target = 3\n"}),
]


def one_line(result: Result) -> str:
    """The only line of a refused run: exit 2, nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quiesce"), lines[0]
    return lines[0]


@pytest.mark.parametrize(("args", "env", "files", "wants"), CASES)
def test_bad_input_is_exit_2_and_one_line_naming_it(
    cli: Cli, args: list[str], env: dict[str, str], files: dict[str, str], wants: tuple[str, ...]
) -> None:
    for name, text in {**MODULES, **files}.items():
        cli.write(name, text)
    line = one_line(cli("--check-config", *args, env=env))
    for want in wants:
        assert want in line


def test_bad_inputs_are_at_least_forty() -> None:
    assert len([c for c in CASES if not c.marks]) >= 40


# -- generated ---------------------------------------------------------------------------

FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,  # nothing written into the checkout
    # The fixture's tmp_path and svc.py serve every example alike.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
DURATIONS = ["--stop-timeout", "--start-timeout", "--hook-timeout", "--grace-period"]
#: Text without a digit: float() takes none of it, or takes it as inf or nan.
NO_DIGITS = st.text(
    st.characters(exclude_categories=["Nd", "Cs"], exclude_characters="\x00"), max_size=12
)
OUT_OF_RANGE = st.one_of(
    st.floats(max_value=0.0),
    st.floats(min_value=86400.0, exclude_min=True),
    st.just(math.nan),
).map(repr)
IN_RANGE = st.floats(min_value=0.0, max_value=86400.0, exclude_min=True)
WRITTEN = st.sampled_from(["{!r}", "{:g}", " {!r} ", "{:g}\t"])


@FAST
@given(flag=st.sampled_from(DURATIONS), text=st.one_of(NO_DIGITS, OUT_OF_RANGE), env=st.booleans())
def test_generated_bad_duration_is_one_line(cli: Cli, flag: str, text: str, env: bool) -> None:
    variable = "QUIESCE_" + flag[2:].replace("-", "_").upper()
    if env:
        line = one_line(cli("--check-config", A, env={variable: text}))
        assert line.startswith(f"quiesce: {flag} (env {variable}): {text!r}: must be "), line
    else:
        line = one_line(cli("--check-config", A, f"{flag}={text}"))
        assert line.startswith(f"quiesce: {flag} (flag): {text!r}: must be "), line


@FAST
@given(flag=st.sampled_from(DURATIONS), seconds=IN_RANGE, form=WRITTEN)
def test_generated_valid_duration_is_accepted(
    cli: Cli, flag: str, seconds: float, form: str
) -> None:
    result = cli("--check-config", A, flag, form.format(seconds))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: svc:asgi would serve http")


DRAIN = st.floats(min_value=0.0, max_value=24.0)  # fits the default 30 s budget with its reserve
DRAIN_MAX = st.floats(min_value=0.0, max_value=24.0, exclude_min=True)  # max and idle: not 0


@FAST
@given(text=st.one_of(NO_DIGITS, OUT_OF_RANGE.filter(lambda t: t not in ("0.0", "-0.0"))))
def test_generated_bad_drain_delay_is_one_line(cli: Cli, text: str) -> None:
    line = one_line(cli("--check-config", A, f"--drain-delay={text}"))
    assert line.startswith(f"quiesce: --drain-delay (flag): {text!r}: "), line


@FAST
@given(low=DRAIN, high=DRAIN_MAX, idle=IN_RANGE, form=WRITTEN)
def test_generated_drain_form_is_accepted_or_min_over_max(
    cli: Cli, low: float, high: float, idle: float, form: str
) -> None:
    text = ",".join(
        f"{k}={form.format(v)}" for k, v in (("min", low), ("max", high), ("idle", idle))
    )
    result = cli("--check-config", A, "--drain-delay", text)
    if low <= high:
        assert result.exit_code == 0, result.output
        assert f"stop budget: drain {high:g}s + " in result.stdout
    else:
        assert (
            one_line(result) == f"quiesce: --drain-delay (flag): {text!r}: min must not exceed max"
        )


@FAST
@given(seconds=DRAIN, form=WRITTEN)
def test_generated_drain_seconds_are_accepted(cli: Cli, seconds: float, form: str) -> None:
    result = cli("--check-config", A, "--drain-delay", form.format(seconds))
    assert result.exit_code == 0, result.output


@FAST
@given(port=st.one_of(st.integers(max_value=-1), st.integers(min_value=65536)))
def test_generated_port_out_of_range_is_one_line(cli: Cli, port: int) -> None:
    line = one_line(cli("--check-config", A, f"--port={port}"))
    assert line == f"quiesce: --port (flag): '{port}': must be an integer from 0 to 65535"


@FAST
@given(text=st.text(string.printable, max_size=8).filter(lambda t: not t.strip().isdigit()))
def test_generated_port_text_is_one_line(cli: Cli, text: str) -> None:
    line = one_line(cli("--check-config", A, f"--port={text}"))
    assert line == f"quiesce: --port (flag): {text!r}: must be an integer from 0 to 65535"


@FAST
@given(port=st.integers(min_value=0, max_value=65535))
def test_generated_port_in_range_is_accepted(cli: Cli, port: int) -> None:
    result = cli("--check-config", A, "--port", str(port))
    assert result.exit_code == 0, result.output
    assert f"(http://127.0.0.1:{port})" in result.stdout


SCHEMES = st.from_regex(r"[A-Za-z][A-Za-z0-9+.-]{0,8}", fullmatch=True).filter(
    lambda s: s.lower() not in ("file", "etcd", "etcds")
)


@FAST
@given(scheme=SCHEMES)
def test_generated_unknown_registry_scheme_is_one_line(cli: Cli, scheme: str) -> None:
    line = one_line(cli("--check-config", A, "--registry", f"{scheme}://127.0.0.1:2379"))
    assert f"unknown registry scheme {scheme.lower()!r}" in line


@FAST
@given(text=st.text(st.characters(exclude_characters=":\x00", exclude_categories=["Cs"])))
def test_generated_registry_without_a_scheme_is_one_line(cli: Cli, text: str) -> None:
    line = one_line(cli("--check-config", A, f"--registry={text}"))
    assert line.startswith(f"quiesce: --registry (flag): {text!r}: must be "), line


@FAST
@given(
    host=st.sampled_from(["127.0.0.1", "localhost", "[::1]"]),
    port=st.one_of(st.integers(min_value=-(10**6), max_value=10**6)),
)
def test_generated_etcd_url_is_accepted_or_a_bad_port(cli: Cli, host: str, port: int) -> None:
    result = cli("--check-config", A, "--registry", f"etcd://{host}:{port}")
    if 1 <= port <= 65535:
        assert result.exit_code == 0, result.output
    else:
        assert "registry 'etcd://" in one_line(result)
