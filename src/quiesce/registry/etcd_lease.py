"""The lease an instance's key lives on in etcd: granted, kept alive, revoked.

A background task sends ``lease/keepalive`` every ``ttl / 3`` for as long as
the process lives. Errors are retried with jittered backoff, logged once when
they begin and once when they end. A keepalive answered without a ``TTL``
means the lease is gone (etcd lost its data, or the lease was revoked): a new
lease is granted and the key put again. A key deleted under a live lease is
put again too. A revoke is retried until the lease would have expired anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from quiesce.errors import describe
from quiesce.registry import Instance, RegistryError
from quiesce.registry.etcd_gateway import _NOT_FOUND, EtcdError, EtcdGateway, _b64

__all__ = ["Registration", "grant_and_put", "keep_alive", "revoke"]

logger = logging.getLogger("quiesce.registry")


@dataclass
class Registration:
    """One registered instance: its key and value, and the lease they live on."""

    instance: Instance
    key: bytes
    value: bytes
    lease: int | None = None
    #: Monotonic time until which the lease is surely alive (last grant/keepalive + its TTL).
    alive_until: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


async def grant_and_put(gateway: EtcdGateway, reg: Registration, ttl: int) -> None:
    """Grant a lease of ``ttl`` seconds and put ``reg``'s key with it."""
    granted = await gateway._call("/lease/grant", {"TTL": ttl})
    # Recorded before the put: a deregister that cancels us mid-put must revoke this
    # lease; and if the put fails, the next keepalive round puts the key again.
    reg.lease = int(granted["ID"])
    reg.alive_until = time.monotonic() + int(granted.get("TTL", ttl))
    await gateway._call(
        "/kv/put", {"key": _b64(reg.key), "value": _b64(reg.value), "lease": str(reg.lease)}
    )


async def keep_alive(
    gateway: EtcdGateway,
    reg: Registration,
    *,
    ttl: int,
    backoff: Callable[[int], float],
    first_delay: float | None = None,
) -> None:
    """Keep ``reg`` registered for as long as the process lives (until deregister)."""
    failures = 0
    failing_since = 0.0
    delay = ttl / 3 if first_delay is None else first_delay
    ident = reg.instance.id
    while True:
        await asyncio.sleep(delay)
        try:
            if reg.lease is None:
                await grant_and_put(gateway, reg, ttl)
                logger.info("%r: registered %s (lease %x)", gateway, ident, reg.lease)
            else:
                answer = await gateway._call("/lease/keepalive", {"ID": str(reg.lease)})
                ttl = int(answer.get("TTL", 0))
                if ttl <= 0:
                    logger.warning(
                        "%r: lease %x of %s is gone (etcd lost it or it was revoked); "
                        "registering again",
                        gateway,
                        reg.lease,
                        ident,
                    )
                    reg.lease = None
                    await grant_and_put(gateway, reg, ttl)
                else:
                    reg.alive_until = time.monotonic() + ttl
                    if not await _key_exists(gateway, reg.key):
                        logger.warning(
                            "%r: key of %s was deleted; putting it again", gateway, ident
                        )
                        await gateway._call(
                            "/kv/put",
                            {
                                "key": _b64(reg.key),
                                "value": _b64(reg.value),
                                "lease": str(reg.lease),
                            },
                        )
        except (RegistryError, httpx.HTTPError, ValueError, KeyError) as exc:
            failures += 1
            if failures == 1:
                failing_since = time.monotonic()
                logger.error(
                    "%r: keeping %s registered is failing, retrying until it works: %s",
                    gateway,
                    ident,
                    describe(exc),
                )
            delay = backoff(failures)
            continue
        if failures:
            logger.warning(
                "%r: keeping %s registered works again after %d failures in %.1fs",
                gateway,
                ident,
                failures,
                time.monotonic() - failing_since,
            )
            failures = 0
        delay = ttl / 3


async def _key_exists(gateway: EtcdGateway, key: bytes) -> bool:
    answer = await gateway._call("/kv/range", {"key": _b64(key), "count_only": True})
    return int(answer.get("count", 0)) > 0


async def revoke(
    gateway: EtcdGateway, reg: Registration, *, backoff: Callable[[int], float]
) -> None:
    """Revoke ``reg``'s lease, retrying while etcd is unreachable and the lease alive.

    Raises:
        RegistryError: etcd stayed unreachable until the lease expired on its own,
            or refused the revoke.

    """
    failures = 0
    while True:
        try:
            await gateway._call("/lease/revoke", {"ID": str(reg.lease)})
            return
        except EtcdError as exc:
            if exc.code == _NOT_FOUND:
                return  # already expired or revoked: the key is gone either way
            raise
        except (RegistryError, httpx.HTTPError) as exc:
            failures += 1
            left = reg.alive_until - time.monotonic()
            if left <= 0:
                raise RegistryError(
                    f"{gateway!r}: could not revoke the lease of {reg.instance.id}; "
                    f"it has expired on its own: {describe(exc)}"
                ) from exc
            if failures == 1:
                logger.warning(
                    "%r: revoke of %s failing, retrying for up to %.1fs: %s",
                    gateway,
                    reg.instance.id,
                    left,
                    describe(exc),
                )
            await asyncio.sleep(min(backoff(failures), left))
