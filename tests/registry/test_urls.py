"""Registry URLs: secrets never shown, bad input one ConfigError line, service names checked.

hypothesis is not installed here, so the "no message shows the secret"
property runs over a generated table: every scheme x credential form x
raw separator x way the rest of the URL is broken.
"""

from __future__ import annotations

import itertools
import logging

import pytest

from conftest import free_ports
from quiesce import App, ExitCode
from quiesce.errors import ConfigError
from quiesce.registry import from_url, redact
from quiesce.registry.etcd import EtcdRegistry
from quiesce.registry.file import FileRegistry

from .test_etcd import instance

#: The secret is written in two halves around a separator; neither half may show.
HALVES = ("Sekr1t", "Pa55wd")
SEPARATORS = ["", "/", "?", "#", "@", ":", "%40", ",", "[", "]"]
SCHEMES = ["etcd", "etcds", "ETCD", "file", "etcdd", "consul"]
CREDENTIALS = ["admin:{s}", "{s}", ":{s}", "a%40b:{s}"]
TAILS = [
    "@127.0.0.1:2379",
    "@127.0.0.1:99999",
    "@[::1",
    "@:2379",
    "@h:0",
    "@a b:1",
    "@h/path",
    "@h?ttl=x",
    "@h?colour=red",
    "@h?ttl=1&ttl=2",
    "@h,,b",
    "@h?ca=/x.pem",
    "@localhost/tmp/x",
    "@h#frag",
]


def urls() -> list[str]:
    made = []
    for scheme, credential, sep, tail in itertools.product(SCHEMES, CREDENTIALS, SEPARATORS, TAILS):
        if credential == "{s}" and sep == ":":
            continue  # "half:half" is user:password: the first half is the user name
        made.append(f"{scheme}://{credential.format(s=sep.join(HALVES))}{tail}")
    return made


def shows_secret(text: str) -> bool:
    return any(half in text for half in HALVES)


def outcome(url: str) -> tuple[bool, str]:
    """(refused, what the user sees): the ConfigError's message, or the registry's repr."""
    try:
        reg = from_url(url)
    except ConfigError as exc:
        return True, str(exc)
    return False, repr(reg)


def test_redact_every_message_from_a_url_with_a_secret_hides_it() -> None:
    refused = 0
    for url in urls():
        assert not shows_secret(redact(url)), url
        was_refused, shown = outcome(url)
        refused += was_refused
        assert not shows_secret(shown), (url, shown)
        assert "\n" not in shown
    # Most of the table is bad input; a test that refuses nothing checks nothing.
    assert refused > len(urls()) * 3 // 4


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("etcd://admin:s3cr3t@host", "etcd://admin:***@host"),
        ("etcd://s3cr3t@host:2379", "etcd://***@host:2379"),
        ("etcdd://admin:s3cr3t@host", "etcdd://admin:***@host"),
        ("file://admin:s3cr3t@host/x", "file://admin:***@host/x"),
        ("etcd://admin:s3/cr3t@host?ttl=1", "etcd://admin:***@host?ttl=1"),
        ("etcd://s3/cr3t@host", "etcd://***@host"),
        ("etcd://admin:***@host", "etcd://admin:***@host"),
        ("etcd://127.0.0.1:2379?prefix=/ms", "etcd://127.0.0.1:2379?prefix=/ms"),
        ("file:///tmp/a@b", "file:///tmp/a@b"),
        ("etcd://[::1", "etcd://[::1"),
        ("", ""),
    ],
)
def test_redact_masks_password_and_token_only_userinfo(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert redact(redact(url)) == shown


@pytest.mark.parametrize(
    "url",
    [
        "etcdd://admin:s3cr3t@host",
        "file://admin:s3cr3t@host/x",
        "etcd://s3cr3t@host",
        "etcd://admin:s3cr3t@[::1",
    ],
)
async def test_redact_app_with_a_secret_in_a_bad_url_keeps_it_out_of_report_and_logs(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    report = await App(name="x", registry=url).serve()
    assert report.exit_code == ExitCode.CONFIG, report.to_text()
    assert report.error is not None
    assert "registry" in report.error
    for text in (report.error, report.to_text(), report.to_json(), caplog.text):
        assert "s3cr3t" not in text


# -- bad input: one ConfigError line, before anything is contacted ------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://[::1", "not a valid URL"),
        ("etcd://[::1]:1,[::2", "bad host in '[::2'"),
        ("etcd://[nope]:2379", "not a valid URL"),
        ("etcd://:2379", "no host name in ':2379'"),
        ("etcd://h:0", "bad port in 'h:0'"),
        ("etcd://a b:2379", "bad host name"),
        ("etcd://admin:s3/cr3t@host", "%2F"),
        ("etcd://token@host", "give user:password"),
        ("file://admin:pw@localhost/x", "no user or password"),
        ("file://[::1/x", "not a valid URL"),
    ],
)
def test_from_url_malformed_host_is_one_config_error_line(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_url(url)
    assert str(info.value).startswith(f"registry {redact(url)!r}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "endpoint",
    ["http://[::1", "127.0.0.1:2379", "http://:2379", 2379, "http://admin:s3cr3t@127.0.0.1:2379"],
)
def test_etcd_constructor_bad_endpoint_is_a_config_error(endpoint: object) -> None:
    with pytest.raises(ConfigError, match="etcd registry: ") as info:
        EtcdRegistry([endpoint])  # type: ignore[list-item]
    assert "s3cr3t" not in str(info.value)


# -- service names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a/b", "contains '/'"),
        ("/", "contains '/'"),
        ("", "is not a name"),
        ("..", "is not a name"),
        ("a\nb", "contains a control character"),
    ],
)
def test_check_name_etcd_refuses_names_that_leave_their_key_segment(name: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        EtcdRegistry().check_name(name)
    assert f"service name {name!r} {reason}" in str(info.value)


def test_check_name_etcd_accepts_ordinary_names_and_file_accepts_any() -> None:
    for name in ("orders", "orders.v2", "orders-eu_1", "Ünïcode"):
        EtcdRegistry().check_name(name)
    for name in ("a/b", "", "..", "a\nb"):
        FileRegistry("/nonexistent").check_name(name)  # quoted into one path component


async def test_check_name_etcd_register_of_a_name_with_a_slash_is_refused_before_etcd() -> None:
    (port,) = free_ports(1)  # nothing listens: a refusal that contacted etcd would be slower
    reg = EtcdRegistry([f"http://127.0.0.1:{port}"])
    with pytest.raises(ConfigError, match="contains '/'"):
        await reg.register(instance("a", name="orders/admin"))
    with pytest.raises(ConfigError, match="contains '/'"):
        reg.keep_registered(instance("a", name="orders/admin"))
    await reg.aclose()
