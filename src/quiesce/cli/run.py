"""``quiesce run TARGET``: serve an App, or an ASGI app in one, with every option from anywhere.

Options come from flags, ``QUIESCE_*`` variables, a config file, the App's own
arguments and the defaults, in that order (:mod:`quiesce.cli.sources`). With
an App target only what the user set (flag, variable, file) overrides the
App; an ASGI target gets an App and an :class:`~quiesce.HTTPServer` built from
the effective values. Nothing binds a port before every option has been
checked: a bad one is exit 2 and one line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from quiesce.app import App
from quiesce.cli.options import OPTIONS, by_name
from quiesce.cli.sources import OptionError, Setting, config_file, gather
from quiesce.cli.target import TargetError, is_asgi, load
from quiesce.errors import ConfigError
from quiesce.process import configure_logging
from quiesce.registry import redact

if TYPE_CHECKING:
    from quiesce.servers.asgi import HTTPServer

__all__ = ["LEVELS", "check_app", "command", "effective", "load_app", "options_of"]

logger = logging.getLogger("quiesce.cli")

#: Sources a user sets; only these override what an App target says itself.
USER_SOURCES = ("flag", "env", "file")


def _click_options(fn: Any) -> Any:
    for option in reversed(OPTIONS):
        if option.name == "target":
            fn = click.argument("target", required=False, metavar="TARGET")(fn)
        elif option.switch:
            flags = f"{option.flag}/--no-{option.flag[2:]}"
            fn = click.option(flags, option.name, default=None, help=option.help)(fn)
        elif option.action or option.name == "factory":
            fn = click.option(option.flag, option.name, is_flag=True, help=option.help)(fn)
        else:
            help_ = f"{option.help} [env {option.env}; default {option.default}]"
            fn = click.option(option.flag, option.name, metavar=option.metavar, help=help_)(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_click_options
@click.version_option(package_name="quiesce", prog_name="quiesce")
@click.pass_context
def command(ctx: click.Context, /, **values: Any) -> None:
    """Serve TARGET (an App, an ASGI app, or with --factory what a callable returns)."""
    given = {
        name: value
        for name, value in values.items()
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    run(given, dict(os.environ), os.getcwd())


def run(flags: Mapping[str, object], environ: Mapping[str, str], cwd: str) -> NoReturn:
    """Gather the options, build the App, then print, check or run it; always exits.

    With ``--workers`` (and neither ``--print-config`` nor ``--check-config``) a
    supervisor runs instead, and imports nothing of the target's itself
    (:mod:`quiesce.workers`).

    Raises:
        ConfigError: any bad option, target or config file (the CLI prints it
            as one line and exits 2).

    """
    settings = options_of(flags, environ, cwd)
    actions = _value(settings, "print_config") or _value(settings, "check_config")
    if _value(settings, "workers") is not None and not actions:
        from quiesce.workers.supervisor import supervise

        supervise(flags, settings, cwd)
    configure_logging(LEVELS[_value(settings, "log_level")])
    app, built = load_app(settings)
    if _value(settings, "print_config"):
        for name, setting in effective(settings, app, built=built).items():
            click.echo(f"{name:<14} {setting.value!s:<32} ({setting.source})")
        sys.exit(0)
    line = check_app(app, settings)
    if _value(settings, "check_config"):
        spec = _value(settings, "target")
        click.echo(f"ok: {spec} would serve {', '.join(_servers(app)) or 'no servers'}")
        click.echo(line)
        sys.exit(0)
    app.run()


def options_of(
    flags: Mapping[str, object], environ: Mapping[str, str], cwd: str
) -> dict[str, Setting]:
    """Every option set by a flag, a ``QUIESCE_*`` variable or the config file.

    Raises:
        ConfigError: a bad value, or a bad or unknown config file.

    """
    file_name, table = config_file(_text(flags.get("config")), environ, cwd)
    return gather(flags, environ, file_name, table)


def load_app(settings: Mapping[str, Setting]) -> tuple[App, bool]:
    """The App ``quiesce run`` serves: the target imported, with the options applied.

    Returns it and whether it was built here (around an ASGI target).

    Raises:
        ConfigError: no target, or one that cannot be imported or built
            (:class:`~quiesce.cli.target.TargetError`), or a bad option.

    """
    spec = _value(settings, "target")
    if spec is None:
        raise OptionError("TARGET: missing (quiesce run module:attr, or target in quiesce.toml)")
    source = settings["target"].source
    try:
        made = load(spec, factory=_value(settings, "factory"), app_dir=_value(settings, "app_dir"))
    except TargetError as exc:
        raise TargetError(f"TARGET ({source}): {exc}") from None
    return build(made, spec, source, settings), not isinstance(made, App)


def check_app(app: App, settings: Mapping[str, Setting]) -> str:
    """Check ``app`` as its run would (:meth:`App.check`); returns the stop budget line.

    Raises:
        ConfigError: what the run would refuse, naming the option the user set and where.

    """
    try:
        return app.check()
    except ConfigError as exc:
        raise _sourced(exc, settings) from None


def build(made: object, spec: str, source: str, settings: Mapping[str, Setting]) -> App:
    """The App to run: ``made`` with the user's options applied, or one around an ASGI app.

    Raises:
        ConfigError: ``made`` is neither an App nor an ASGI app, or an option
            names a server the App does not have.

    """
    if isinstance(made, App):
        app = made
        for option in OPTIONS:
            setting = settings.get(option.name)
            if option.app is not None and setting is not None and _by_user(setting):
                setattr(app, option.app, setting.value)
        _apply_http(app, settings)
    elif is_asgi(made):
        from quiesce.servers.asgi import HTTPServer  # uvicorn only for an HTTP target

        # Only what the user set: the rest stays the App's defaults, and says so.
        options = {o.app: settings[o.name].value for o in OPTIONS if o.app and o.name in settings}
        app = App(**{"name": _module_name(spec), **options})
        server = HTTPServer(
            made,  # type: ignore[arg-type]  # is_asgi() checked its shape
            host=_value(settings, "host"),
            port=_value(settings, "port"),
            access_log=_value(settings, "access_log"),
            engine=_value(settings, "engine"),
        )
        app.add_server(server)
    else:
        what = type(made).__name__
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise TargetError(
            f"TARGET ({source}): {spec!r} is {article} {what}, neither an App nor an ASGI app"
        )
    _apply_grpc(app, settings)
    if (admin := settings.get("admin_port")) is not None:
        from quiesce.servers.admin import AdminServer  # prometheus-client only when asked

        app.add_server(AdminServer(port=admin.value))
    if app.log_queue is None:
        app.log_queue = True  # the CLI set the handlers up: keep a stalled stream off the loop
    return app


def _sourced(error: ConfigError, settings: Mapping[str, Setting]) -> ConfigError:
    """``error`` (the App's words) naming the option the user set and where: flag, env, file."""
    message = str(error)
    user = [o for o in OPTIONS if (s := settings.get(o.name)) is not None and _by_user(s)]
    servers = {"grpc": "grpc", "admin_port": "admin"}  # servers the CLI added itself
    for option in user:
        heads: tuple[str, ...] = (f"{option.app}=", f"{option.app} ") if option.app else ()
        if option.name in servers:
            heads = (f"server {servers[option.name]!r}",)
        if message.startswith(heads):
            return OptionError(f"{option.flag} ({settings[option.name].source}): {message}")
    for option in user:  # named within the message: "drain_delay=2s does not fit stop_timeout=3s"
        if option.app and f"{option.app}=" in message:
            return OptionError(f"{option.flag} ({settings[option.name].source}): {message}")
    return error


def _apply_http(app: App, settings: Mapping[str, Setting]) -> None:
    """Set the App's HTTP server's host, port and access log where the user set them.

    That is its only HTTP server, or of several the one named ``http`` (a gateway or an
    admin server beside it keeps its own).
    """
    http = _main_http(app)
    for name in ("host", "port", "access_log", "engine"):
        setting = settings.get(name)
        if setting is None or not _by_user(setting):
            continue
        if len(http) != 1:
            servers = ", ".join(s.name for s in http) or "none"
            raise OptionError(
                f"{by_name(name).flag} ({setting.source}): the app has {len(http)} HTTP "
                f"servers ({servers}) and none is named 'http'; set it in code"
            )
        if name == "access_log":
            http[0].uvicorn_options["access_log"] = setting.value
        else:
            setattr(http[0], name, setting.value)


def _main_http(app: App) -> list[HTTPServer]:
    """The HTTP server the server options are about: the only one, or the one named http."""
    from quiesce.servers.asgi import HTTPServer

    http = [s for s in app.servers if isinstance(s, HTTPServer)]
    return [s for s in http if s.name == "http"] or http if len(http) > 1 else http


def _apply_grpc(app: App, settings: Mapping[str, Setting]) -> None:
    from_flag = settings.get("grpc")
    port = settings.get("grpc_port")
    if from_flag is None and port is None:
        return
    from quiesce.servers.grpc import GRPCServer

    if from_flag is not None:
        try:
            source = load(from_flag.value, factory=False, app_dir=_value(settings, "app_dir"))
        except TargetError as exc:
            raise TargetError(f"--grpc ({from_flag.source}): {exc}") from None
        number = port.value if port is not None else by_name("grpc_port").default
        app.add_server(GRPCServer(source, port=number))
        return
    servers = [s for s in app.servers if isinstance(s, GRPCServer)]
    if len(servers) != 1 or port is None:
        names = ", ".join(s.name for s in servers) or "none"
        raise OptionError(
            f"--grpc-port ({port.source if port else 'default'}): the app has {len(servers)} "
            f"gRPC servers ({names}); add one with --grpc module:attr, or set it in code"
        )
    servers[0].port = port.value


def effective(settings: Mapping[str, Setting], app: App, *, built: bool) -> dict[str, Setting]:
    """Every option's effective value and its source, for ``--print-config``.

    ``built``: the App was made here around an ASGI target (its name is the
    module's, by default). A registry URL's password is masked.
    """
    out: dict[str, Setting] = {}
    own = {} if built else _servers_own(app)
    for option in OPTIONS:
        if option.action or option.name == "config":
            continue
        setting = settings.get(option.name)
        if setting is not None:
            out[option.name] = setting
        elif option.name in own:
            out[option.name] = Setting(own[option.name], "app")
        elif option.app is not None:
            given = option.app in app._given and not (built and option.name == "name")
            source = "app" if given else "default"
            out[option.name] = Setting(getattr(app, option.app), source)
        else:
            out[option.name] = Setting(option.default, "default")
    registry = out["registry"]
    if isinstance(registry.value, str):
        out["registry"] = Setting(redact(registry.value), registry.source)
    return out


def _servers_own(app: App) -> dict[str, object]:
    """What an App target's own HTTP and gRPC servers say of the server options."""
    from quiesce.servers.grpc import GRPCServer

    own: dict[str, object] = {}
    http = _main_http(app)
    if len(http) == 1:
        own["host"], own["port"] = http[0].host, http[0].port
        own["access_log"] = http[0].uvicorn_options.get("access_log", True)
        own["engine"] = http[0].engine
    grpc = [s for s in app.servers if isinstance(s, GRPCServer)]
    if len(grpc) == 1:
        own["grpc_port"] = grpc[0].port
    return own


def _by_user(setting: Setting) -> bool:
    return setting.source.split()[0] in USER_SOURCES


def _value(settings: Mapping[str, Setting], name: str) -> Any:
    setting = settings.get(name)
    return setting.value if setting is not None else by_name(name).default


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _module_name(spec: str) -> str:
    """``pkg.sub.mod:app`` and ``pkg/sub/mod.py:app`` are both ``mod``."""
    module = os.path.basename(spec.rpartition(":")[0]).removesuffix(".py")
    return module.rpartition(".")[2] or "app"


def _servers(app: App) -> list[str]:
    return [f"{s.name} ({', '.join(s.endpoints())})" for s in app.servers]


#: ``--log-level`` names and the logging levels they set.
LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}
