"""The etcd registry's watch of one service: list its keys, then follow their changes.

``kv/range`` of ``<prefix>/<name>/`` (the trailing ``/`` keeps ``foo`` from
matching ``foobar``), then ``watch`` from the next revision; re-listed after a
cancelled watch (compaction), a broken stream, and every ``relist_interval``
seconds (jittered down to three quarters), which also bounds how long a
silently dead connection can hide changes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable

import httpx

from quiesce.errors import describe
from quiesce.registry import Instance, RegistryError, parse_instances
from quiesce.registry.etcd_gateway import (
    _UNAUTHENTICATED,
    EtcdError,
    EtcdGateway,
    _b64,
    _prefix_end,
    _result,
)

__all__ = ["watch_prefix"]

logger = logging.getLogger("quiesce.registry")


async def watch_prefix(
    gateway: EtcdGateway,
    prefix: bytes,
    name: str,
    *,
    relist_interval: float,
    backoff: Callable[[int], float],
) -> AsyncGenerator[list[Instance], None]:
    """Yield the instances of ``name`` under ``prefix`` now, then whenever they change.

    Errors (etcd down, member lost) are logged once and retried after
    ``backoff(failures)`` seconds; the iterator itself does not raise for them.
    """
    current: dict[str, bytes] = {}
    last: list[Instance] | None = None
    failures = 0
    while True:
        try:
            kvs, revision = await gateway._range(prefix)
            current = dict(kvs)
            if failures:
                logger.warning("%r: watch of %r works again", gateway, name)
                failures = 0
            listed = parse_instances(current, repr(gateway), name)
            if listed != last:
                last = listed
                yield listed
            relist_at = time.monotonic() + relist_interval * random.uniform(0.75, 1)
            request = {
                "create_request": {
                    "key": _b64(prefix),
                    "range_end": _b64(_prefix_end(prefix)),
                    "start_revision": str(revision + 1),
                }
            }
            async with gateway._stream("/watch", request) as messages:
                while True:
                    try:
                        async with asyncio.timeout_at(_loop_time(relist_at)):
                            message = await anext(messages)
                    except (TimeoutError, StopAsyncIteration):
                        break  # time to re-list, or the member ended the stream
                    result = _result(message)
                    if result.get("canceled"):
                        reason = str(result.get("cancel_reason", ""))
                        if "Unauthenticated" in reason or "auth token" in reason:
                            # etcd refuses a stale token by cancelling the new watch.
                            raise EtcdError(reason, _UNAUTHENTICATED)
                        # Compacted past our revision (or etcd cancelled it): re-list.
                        logger.info(
                            "%r: watch of %r cancelled (%s); re-listing",
                            gateway,
                            name,
                            reason or "compaction",
                        )
                        break
                    for event in result.get("events", ()):
                        kv = event.get("kv", {})
                        key = base64.b64decode(kv.get("key", "")).decode()
                        if event.get("type") == "DELETE":
                            current.pop(key, None)
                        else:
                            current[key] = base64.b64decode(kv.get("value", ""))
                    listed = parse_instances(current, repr(gateway), name)
                    if listed != last:
                        last = listed
                        yield listed
        except (RegistryError, httpx.HTTPError, ValueError) as exc:
            if isinstance(exc, EtcdError) and exc.code == _UNAUTHENTICATED:
                gateway._tokens.clear()  # expired, or another member's: authenticate again
            failures += 1
            if failures == 1:
                logger.warning(
                    "%r: watch of %r failing, retrying: %s", gateway, name, describe(exc)
                )
            await asyncio.sleep(backoff(failures))


def _loop_time(monotonic_at: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock (uvloop's differs)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_at - time.monotonic())
