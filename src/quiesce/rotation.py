"""The discovery client's rotation: round-robin over a service's HTTP instances, with ejection.

:class:`Rotation` is what :class:`quiesce.client.DiscoveryTransport` chooses
instances from; the transport sends the requests and tells the rotation how
each attempt went. It holds the instances of the watch's latest list that
have an HTTP endpoint (:func:`http_endpoint`), in the list's order, each with
its record of consecutive connect failures. ``ejection_threshold`` of them in
a row take an instance out for ``ejection_time`` seconds, unless it is the
last one in.

Nothing here sends anything, so this module needs no httpx; its log lines go
to the ``quiesce.client`` logger, where whoever configures the client's
logging looks for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from quiesce.registry import Instance

__all__ = ["Rotation", "Target", "http_endpoint"]

logger = logging.getLogger("quiesce.client")


def http_endpoint(instance: Instance) -> tuple[str, str, int] | None:
    """The first HTTP endpoint of ``instance`` as ``(scheme, host, port)``, or None.

    ``https://...`` and Kratos' ``http://...?isSecure=true`` are HTTPS; other
    schemes (``grpc://``) are skipped, as is an endpoint without a host.
    Raises nothing: a malformed endpoint is skipped too.
    """
    for endpoint in instance.endpoints:
        try:
            parts = urlsplit(endpoint)
            port = parts.port
        except ValueError:
            continue  # a malformed endpoint: another instance's problem, not ours
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            continue
        if scheme == "http" and any(
            k == "isSecure" and v.lower() == "true" for k, v in parse_qsl(parts.query)
        ):
            scheme = "https"
        return scheme, parts.hostname, port or (443 if scheme == "https" else 80)
    return None


@dataclass(eq=False, slots=True)
class Target:
    """One instance's HTTP endpoint in the rotation, with its failure record."""

    instance: Instance
    scheme: str
    #: ``host:port`` (``[host]:port`` for IPv6), the ``Host`` header of a request to it.
    netloc: str
    #: ``scheme://host:port``, what a request's path is appended to.
    origin: str
    #: Consecutive connect failures; any response resets it.
    failures: int = 0
    #: ``time.monotonic()`` until which the instance is ejected; 0.0 when it is not.
    ejected_until: float = 0.0

    def describe(self) -> str:
        """``instance 'id' (origin)``, how log lines and error notes name it; raises nothing."""
        return f"instance {self.instance.id!r} ({self.origin})"


class Rotation:
    """The targets requests go to in turn, and which of them are ejected.

    Raises nothing: the caller checks the options (``DiscoveryTransport`` does).

    Args:
        ejection_threshold: consecutive connect failures that eject an instance.
        ejection_time: seconds an ejected instance stays out.
        owner: what log lines name as the rotation's user (the transport).

    """

    def __init__(self, *, ejection_threshold: int, ejection_time: float, owner: object) -> None:
        self.ejection_threshold = ejection_threshold
        self.ejection_time = ejection_time
        self._owner = owner
        self._targets: list[Target] = []
        self._next = 0  # the round-robin position of the next request
        self._available = asyncio.Event()  # set while the rotation is not empty

    @property
    def targets(self) -> list[Target]:
        """The targets now (ejected ones included), in rotation order."""
        return self._targets

    async def wait_for_any(self) -> None:
        """Return once the rotation has a target (at once if it has one); raises nothing."""
        await self._available.wait()

    def update(self, instances: Sequence[Instance]) -> None:
        """Take the watch's new list; instances that stay keep their failure record.

        Instances without an HTTP endpoint are left out. Raises nothing.
        """
        known = {(t.instance.id, t.scheme, t.netloc): t for t in self._targets}
        targets = []
        for instance in instances:
            endpoint = http_endpoint(instance)
            if endpoint is None:
                continue
            scheme, host, port = endpoint
            netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            target = known.get((instance.id, scheme, netloc))
            if target is None:
                target = Target(instance, scheme, netloc, f"{scheme}://{netloc}")
            else:
                target.instance = instance
            targets.append(target)
        self._targets = targets
        if targets:
            self._available.set()
        else:
            self._available.clear()

    def start(self) -> int:
        """The position a new request starts choosing from; each call moves it on by one."""
        position = self._next
        self._next += 1
        return position

    def after(self, target: Target, position: int) -> int:
        """Where to go on choosing after ``target`` failed: the position past it.

        ``position`` again when ``target`` left the rotation meanwhile. Raises nothing.
        """
        return self._targets.index(target) + 1 if target in self._targets else position

    def choose(self, position: int, tried: Sequence[Target]) -> Target | None:
        """The next untried target from ``position`` on, round-robin; None when all were tried.

        Ejected targets are skipped; when only ejected ones are left, the
        first of them is used rather than none (every instance failing is
        better tried than given up on). One whose ejection has run out is
        taken back. Raises nothing.
        """
        targets = self._targets
        n = len(targets)
        now = 0.0
        fallback: Target | None = None
        for i in range(n):
            target = targets[(position + i) % n]
            if target in tried:
                continue
            if target.ejected_until:
                if not now:
                    now = time.monotonic()
                if target.ejected_until > now:
                    if fallback is None:
                        fallback = target
                    continue
                target.ejected_until = 0.0
                target.failures = 0
                logger.info("%r: %s is back in the rotation", self._owner, target.describe())
            return target
        return fallback

    def answered(self, target: Target) -> None:
        """``target`` gave a response: its run of connect failures ends. Raises nothing."""
        target.failures = 0

    def connect_failed(self, target: Target, exc: BaseException) -> None:
        """No connection could be made to ``target``: eject it after enough in a row.

        ``exc`` is named in the log line of an ejection. Raises nothing.
        """
        target.failures += 1
        if target.failures < self.ejection_threshold or target.ejected_until:
            return
        now = time.monotonic()
        if not any(t is not target and t.ejected_until <= now for t in self._targets):
            return  # never eject the last instance in the rotation
        target.ejected_until = now + self.ejection_time
        logger.warning(
            "%r: ejected %s for %gs after %d consecutive connect failures (last: %s)",
            self._owner,
            target.describe(),
            self.ejection_time,
            target.failures,
            exc,
        )
