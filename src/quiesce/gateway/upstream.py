"""Where the gateway's calls go: one channel to a fixed target, or one per registry instance.

:class:`Upstream` is one target (a ``GRPCServer`` of the same App on
loopback, or a ``host:port``): a single ``grpc.aio`` channel, opened at the
gateway's start. :class:`RegistryUpstream` follows a service in the App's
registry (:meth:`~quiesce.registry.Discovery.watch`): one channel per
instance's ``grpc://`` endpoint, chosen round-robin, skipping channels in
``TRANSIENT_FAILURE`` while another is usable. An instance that leaves the
list leaves the rotation at once; its channel is closed in the background
once its in-flight calls have finished (``channel.close(grace)``).

Opening a channel dials nothing: grpc connects on the first call. The
reconnect backoff is capped at one second (grpc's default grows to two
minutes), so that an upstream that comes up late is used within about the
``Retry-After: 1`` the gateway answers meanwhile.

The three forms of ``upstream=`` (a ``GRPCServer``'s name, ``host:port``,
``registry:SERVICE``) are told apart and checked here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import grpc

from quiesce.registry import Discovery, Instance
from quiesce.registry.following import follow

__all__ = [
    "CHANNEL_OPTIONS",
    "Member",
    "RegistryUpstream",
    "Upstream",
    "bad_upstream",
    "grpc_endpoint",
    "loopback_target",
    "upstream_kind",
]

logger = logging.getLogger("quiesce.gateway")

#: Options of every gateway channel: reconnect quickly to an upstream that was down.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
#: How long the channel of an instance that left the registry waits for its in-flight calls.
REMOVED_GRACE = 30.0
#: How long a channel closed at once may take beyond the stop's timeout.
CLOSE_MARGIN = 0.1
#: First delay before watching again after the registry watch failed; doubles up to the cap.
WATCH_BACKOFF_FIRST = 0.1
WATCH_BACKOFF_CAP = 5.0

_TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE


class Member:
    """One channel of the upstream, with its callables cached by method."""

    __slots__ = ("_calls", "channel", "name", "target")

    def __init__(self, name: str, target: str, *, secure: bool = False) -> None:
        self.name = name
        self.target = target
        self.channel = (
            grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), CHANNEL_OPTIONS)
            if secure
            else grpc.aio.insecure_channel(target, CHANNEL_OPTIONS)
        )
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}

    def unary(
        self, rpc: str, serialize: Callable[[Any], bytes], parse: Callable[[bytes], Any]
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """The callable of unary method ``rpc`` (``/pkg.Service/Method``) on this channel."""
        call = self._calls.get(rpc)
        if call is None:
            call = self._calls[rpc] = self.channel.unary_unary(rpc, serialize, parse)
        return call

    def failing(self) -> bool:
        """Whether grpc gave up connecting for now (a usable member is picked instead)."""
        return self.channel.get_state(try_to_connect=False) is _TRANSIENT_FAILURE

    def __repr__(self) -> str:
        return f"{self.name} ({self.target})"


class Upstream:
    """A single target: ``target()`` is read at :meth:`open` (a server's real port by then)."""

    def __init__(self, describe: str, target: Callable[[], str]) -> None:
        self.describe = describe
        self._target = target
        self._member: Member | None = None

    async def open(self) -> None:
        """Open the channel; nothing is dialled until the first call. Raises nothing."""
        self._member = Member(self.describe, self._target())

    async def member(self, timeout: float) -> Member | None:
        """The channel to call on; None before :meth:`open` or after :meth:`aclose`."""
        return self._member

    def why_none(self) -> str:
        """Why :meth:`member` found nothing, for the 503's message."""
        return f"upstream {self.describe} is not open"

    async def aclose(self, timeout: float) -> None:
        """Close the channel, letting its calls finish within ``timeout``; raises nothing."""
        member, self._member = self._member, None
        if member is not None:
            await _close(member, timeout)


class RegistryUpstream:
    """Every instance of ``service`` in ``discovery``, followed for as long as it is open."""

    def __init__(self, discovery: Discovery, service: str) -> None:
        self.describe = f"registry:{service}"
        self.discovery = discovery
        self.service = service
        self._members: list[Member] = []
        self._next = 0
        self._available = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._watch_error: BaseException | None = None

    async def open(self) -> None:
        """Begin following the registry (a task; the first list comes in the background)."""
        self._follower = asyncio.create_task(
            self._follow(), name=f"quiesce gateway watch {self.service}"
        )

    @property
    def members(self) -> list[Member]:
        """The channels in the rotation now, in the registry's order."""
        return self._members

    async def member(self, timeout: float) -> Member | None:
        """The next member round-robin, waiting up to ``timeout`` for the first; raises nothing.

        One whose channel is in ``TRANSIENT_FAILURE`` is skipped while another is
        not; None when the service has no instance with a ``grpc://`` endpoint.
        """
        if not self._members and self._follower is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._available.wait()
        members = self._members
        n = len(members)
        for i in range(n):
            candidate = members[(self._next + i) % n]
            if i == n - 1 or not candidate.failing():
                self._next = self._next + i + 1
                return candidate
        return None

    def why_none(self) -> str:
        """Why :meth:`member` found nothing, for the 503's message."""
        why = f" (the watch is failing: {self._watch_error!r})" if self._watch_error else ""
        return f"no instance of service {self.service!r} with a grpc:// endpoint{why}"

    def update(self, instances: Sequence[Instance]) -> None:
        """Take the watch's latest list: new instances get a channel, gone ones leave at once."""
        known = {(m.name, m.target): m for m in self._members}
        members: list[Member] = []
        for instance in instances:
            endpoint = grpc_endpoint(instance)
            if endpoint is None:
                continue
            target, secure = endpoint
            member = known.pop((instance.id, target), None)
            members.append(member or Member(instance.id, target, secure=secure))
        self._members = members
        if members:
            self._available.set()
        else:
            self._available.clear()
        for gone in known.values():
            # Out of the rotation now; its channel goes once its in-flight calls are done.
            logger.info("gateway %s: %r left the rotation", self.describe, gone)
            task = asyncio.create_task(_close(gone, REMOVED_GRACE), name=f"quiesce close {gone}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self, timeout: float) -> None:
        """Stop following; close every channel, letting calls finish within ``timeout``."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await follower
        members, self._members = self._members, []
        self._available.clear()
        closing = [asyncio.create_task(_close(m, timeout)) for m in members]
        closing.extend(self._closing)  # instances that left, still finishing their calls
        if not closing:
            return
        _, late = await asyncio.wait(closing, timeout=timeout)
        for task in late:
            task.cancel()  # _close() then closes its channel at once
        if late:
            await asyncio.wait(late, timeout=CLOSE_MARGIN)

    async def _follow(self) -> None:
        await follow(
            self.discovery,
            self.service,
            self.update,
            who=f"gateway {self.describe}",
            failing=self._watching,
            first=WATCH_BACKOFF_FIRST,
            cap=WATCH_BACKOFF_CAP,
        )

    def _watching(self, error: BaseException | None) -> None:
        self._watch_error = error


def grpc_endpoint(instance: Instance) -> tuple[str, bool] | None:
    """The first gRPC endpoint of ``instance`` as ``(host:port, secure)``, or None.

    ``grpcs://`` and Kratos' ``grpc://...?isSecure=true`` are TLS; other
    schemes are skipped, as is a malformed endpoint. Raises nothing.
    """
    for endpoint in instance.endpoints:
        try:
            parts = urlsplit(endpoint)
            port = parts.port
        except ValueError:
            continue
        scheme = parts.scheme.lower()
        if scheme not in ("grpc", "grpcs") or not parts.hostname or port is None:
            continue
        secure = scheme == "grpcs" or any(
            k == "isSecure" and v.lower() == "true" for k, v in parse_qsl(parts.query)
        )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{port}", secure
    return None


async def _close(member: Member, grace: float) -> None:
    """Close ``member``'s channel: new calls fail at once, running ones get ``grace``."""
    try:
        await member.channel.close(grace if grace > 0 else None)
    except asyncio.CancelledError:
        # The gateway's stop closes what is still closing: at once, then stop waiting.
        await member.channel.close(None)
        raise


def upstream_kind(upstream: object) -> str:
    """``server``, ``target`` (``host:port``) or ``registry`` (``registry:SERVICE``)."""
    if not isinstance(upstream, str) or ":" not in upstream:
        return "server"
    return "registry" if upstream.startswith("registry:") else "target"


def bad_upstream(upstream: object) -> str | None:
    """Why ``upstream`` is not a server name, a ``host:port`` or ``registry:SERVICE``; or None."""
    forms = "must be a GRPCServer's name, host:port or registry:SERVICE"
    if not isinstance(upstream, str) or not upstream.strip() or upstream != upstream.strip():
        return forms
    kind = upstream_kind(upstream)
    if kind == "registry":
        return None if upstream.partition(":")[2] else "registry: needs a SERVICE name"
    if kind == "server":
        return None
    host, _, port = upstream.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return "an IPv6 address is written [address]:port"
    if not host or "/" in host:
        return forms
    if not port.isdigit() or not 0 < int(port) <= 65535:
        return f"port {port!r} must be an integer from 1 to 65535"
    return None


def loopback_target(server: Any) -> str:
    """``host:port`` to call a GRPCServer of this process on: loopback for a wildcard bind."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(server.host, server.host)
    return f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"
