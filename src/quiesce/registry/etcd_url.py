"""The etcd registry's URLs: ``etcd[s]://...`` into its arguments, and the members' client URLs.

Both are checked when the registry is made, so that a bad one is a
:class:`~quiesce.errors.ConfigError` at validation rather than a failure at
the first request.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from typing import TypedDict
from urllib.parse import unquote, urlsplit

from quiesce.errors import ConfigError
from quiesce.registry import positive_seconds, query_options, redact, split_userinfo

__all__ = ["RegistryArguments", "check_client_url", "registry_arguments"]


class RegistryArguments(TypedDict):
    """:class:`~quiesce.registry.etcd.EtcdRegistry`'s arguments, as an etcd URL gives them."""

    endpoints: list[str]
    prefix: str
    ttl: float
    username: str | None
    password: str | None
    ssl_context: ssl.SSLContext | None
    request_timeout: float
    relist_interval: float


def registry_arguments(url: str) -> RegistryArguments:
    """The registry's arguments from ``etcd[s]://...`` (see ``EtcdRegistry.from_url``).

    Raises:
        ConfigError: the URL does not parse, no host (or a bad one), a bad port
            or option, a user without a password, or unreadable TLS files.

    """
    safe = redact(url)  # error messages name the URL, never its secret
    userinfo, bare = split_userinfo(url)
    try:
        parts = urlsplit(bare)
    except ValueError as exc:
        raise ConfigError(f"registry {safe!r}: not a valid URL ({exc})") from None
    secure = parts.scheme.lower() == "etcds"
    options = query_options(url, ("prefix", "ttl", "timeout", "relist", "ca", "cert", "key"))
    username = password = None
    if userinfo is not None:
        user, sep, pw = userinfo.partition(":")
        if not sep or not user:
            raise ConfigError(
                f"registry {safe!r}: give user:password before the '@' "
                "(a token alone is not a credential etcd takes)"
            )
        if any(c in userinfo for c in "/?#@"):
            raise ConfigError(
                f"registry {safe!r}: write '/', '?', '#' and '@' in the user or "
                "password as %2F, %3F, %23 and %40 (or in the prefix: ?prefix=%40...)"
            )
        username, password = unquote(user), unquote(pw)
    endpoints = [_endpoint(safe, host, secure) for host in parts.netloc.split(",")]
    if parts.path not in ("", "/"):
        raise ConfigError(f"registry {safe!r}: use ?prefix=..., not a path")
    context = None
    if secure:
        try:
            context = ssl.create_default_context(cafile=options.get("ca"))
            if "cert" in options:
                context.load_cert_chain(options["cert"], options.get("key"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"registry {safe!r}: TLS files: {exc}") from exc
    elif {"ca", "cert", "key"} & set(options):
        raise ConfigError(f"registry {safe!r}: ca/cert/key need etcds://")
    ttl = positive_seconds(safe, options, "ttl", 10.0)
    if ttl < 1:
        raise ConfigError(f"registry {safe!r}: ttl must be at least 1 second")
    return {
        "endpoints": endpoints,
        "prefix": options.get("prefix", "/microservices"),
        "ttl": ttl,
        "username": username,
        "password": password,
        "ssl_context": context,
        "request_timeout": positive_seconds(safe, options, "timeout", 3.0),
        "relist_interval": positive_seconds(safe, options, "relist", 45.0),
    }


def check_client_url(endpoint: object) -> None:
    """Refuse a member URL httpx could only fail on at the first request.

    Raises:
        ConfigError: not a string, not ``http://`` or ``https://``, no host, a bad
            port, or credentials in it.

    """
    if not isinstance(endpoint, str):
        raise ConfigError(f"etcd registry: an endpoint is a URL string, not {endpoint!r}")
    safe = redact(endpoint)
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"etcd registry: bad endpoint {safe!r} ({exc})") from None
    if "@" in parts.netloc:
        # It would be shown by repr() and every error naming the member.
        raise ConfigError(
            f"etcd registry: endpoint {safe!r}: give username= and password=, not user@host"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(
            f"etcd registry: bad endpoint {safe!r} (expected http[s]://host:port, "
            "the members' client URLs)"
        )


def _endpoint(safe: str, host: str, secure: bool) -> str:
    """The client URL of one ``host[:port]`` of an etcd URL (``safe``: the URL, redacted).

    Raises:
        ConfigError: an empty host, no host name (``:2379``), a malformed one
            (``[::1``, ``a b``), or a port that is not 1-65535.

    """
    if not host:
        raise ConfigError(f"registry {safe!r}: an empty host")
    try:
        parsed = urlsplit(f"//{host}")
    except ValueError:  # "Invalid IPv6 URL": an unclosed bracket
        raise ConfigError(f"registry {safe!r}: bad host in {host!r}") from None
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(f"registry {safe!r}: bad port in {host!r} (1-65535)") from None
    hostname = parsed.hostname or ""
    if not hostname:
        raise ConfigError(f"registry {safe!r}: no host name in {host!r} (host:port)")
    if ":" in hostname:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise ConfigError(f"registry {safe!r}: bad IPv6 address in {host!r}") from None
        hostname = f"[{hostname}]"
    elif not _HOSTNAME.fullmatch(hostname):
        raise ConfigError(f"registry {safe!r}: bad host name in {host!r}")
    if port == 0:
        raise ConfigError(f"registry {safe!r}: bad port in {host!r} (1-65535)")
    return f"{'https' if secure else 'http'}://{hostname}:{port or 2379}"


#: A DNS name or an IPv4 address: what an etcd member's host can be besides ``[IPv6]``.
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
