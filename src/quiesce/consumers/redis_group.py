"""The Redis commands of one consumer of a stream's group, for :mod:`.redis_stream`.

Each method is one round trip (a pipeline where several commands go together)
and turns what Redis answers into :class:`~quiesce.Message` objects whose
``delivery_count`` is the pending list's. Bounds come from the client's
socket timeouts and the consumer's ``_bounded``: nothing here waits by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from quiesce.consumers.message import Message

__all__ = ["NO_HEADERS", "Fields", "GroupCalls", "entries", "without_password"]

#: A stream entry's fields, decoded as UTF-8 (bytes that are not come as surrogate escapes).
Fields = dict[str, str]
#: What a read or a claim found: (entry id, fields); empty fields: deleted from the stream.
Found = list[tuple[str, Fields]]

BROKER = "redis"
#: A stream entry's headers: none, one shared read-only mapping for all.
NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


class GroupCalls:
    """``consumer`` of ``group`` on ``stream``, through ``client``."""

    def __init__(self, client: Redis, stream: str, group: str, consumer: str) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer

    async def create(self, start_id: str) -> bool:
        """Create the group (and the stream) at ``start_id``; False when it was there."""
        try:
            await self.client.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
            return False
        return True

    async def read_own(self, after: str, count: int) -> Found:
        """Up to ``count`` of our own pending entries after ``after`` (a delivery more each)."""
        streams: dict[Any, Any] = {self.stream: after}
        return entries(await self.client.xreadgroup(self.group, self.consumer, streams, count))

    async def claim(self, ids: Sequence[str]) -> list[Message[Fields]]:
        """Claim entries to this consumer (a delivery more each), with their counts.

        An entry no longer pending is not claimed; one deleted from the stream is
        dropped from the pending list by Redis.
        """
        if not ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            _ = pipe.xclaim(self.stream, self.group, self.consumer, 0, list(ids))
            self._queue_counts(pipe, ids)
            claimed, *pending = await pipe.execute()
        return self._with_counts([(i, f) for i, f in claimed if f], pending)

    async def autoclaim(self, min_idle: float, start: str, count: int) -> tuple[str, Found]:
        """Claim up to ``count`` entries pending over ``min_idle`` seconds, from ``start`` on.

        Returns where the next scan goes on (``"0-0"``: it went through the whole list).
        """
        idle = round(min_idle * 1000)
        reply = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, idle, start_id=start, count=count
        )
        return str(reply[0]), [(str(i), dict(f or {})) for i, f in reply[1]]

    async def counted(self, found: Found) -> list[Message[Fields]]:
        """The entries as messages, counted; those deleted from the stream are acked."""
        gone = [i for i, f in found if not f]
        found = [(i, f) for i, f in found if f]
        if not found and not gone:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            self._queue_counts(pipe, [i for i, _ in found])
            if gone:  # nothing left to run
                _ = pipe.xack(self.stream, self.group, *gone)
            replies = await pipe.execute()
        return self._with_counts(found, replies[: len(found)])

    async def pending(self, top: str, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` of our pending entries up to id ``top``: (id, deliveries)."""
        found = await self.client.xpending_range(
            self.stream, self.group, "-", top, count, self.consumer
        )
        return [(str(p["message_id"]), int(p["times_delivered"])) for p in found]

    async def ack(self, ids: Iterable[str]) -> None:
        """``XACK`` the entries."""
        await self.client.xack(self.stream, self.group, *ids)

    async def hand_back(self, ids: Sequence[str], idle: float) -> None:
        """Keep them ours but idle for ``idle`` seconds: a claim of that age takes them.

        ``JUSTID`` does not count a delivery.
        """
        await self.client.xclaim(
            self.stream,
            self.group,
            self.consumer,
            0,
            list(ids),
            idle=round(idle * 1000),
            justid=True,
        )

    async def dead_letter(self, target: str, message: Message[Fields], error: str) -> None:
        """Add it to the ``target`` stream and ack it, in one ``MULTI``."""
        fields = message.body | {
            "dead_letter.id": message.id,
            "dead_letter.stream": self.stream,
            "dead_letter.group": self.group,
            "dead_letter.consumer": self.consumer,
            "dead_letter.error": error,
            "dead_letter.deliveries": str(message.delivery_count),
        }
        # Together: a crash between the two would dead-letter it twice.
        async with self.client.pipeline(transaction=True) as pipe:
            _ = pipe.xadd(target, dict[Any, Any](fields))
            _ = pipe.xack(self.stream, self.group, message.id)
            await pipe.execute()

    async def unblock(self, client_id: int) -> None:
        """End a blocking read now, as if its time had run out.

        Only a shortcut (the read ends by itself): an error, even a lost connection, is let be.
        """
        with contextlib.suppress(RedisError):
            await self.client.client_unblock(client_id)

    async def kill(self, client_id: int) -> None:
        """Close a connection on Redis' side (an ACL refusing it is let be)."""
        with contextlib.suppress(ResponseError):
            await self.client.client_kill_filter(_id=str(client_id))

    def _queue_counts(self, pipe: Any, ids: Iterable[str]) -> None:
        for i in ids:
            _ = pipe.xpending_range(self.stream, self.group, i, i, 1)

    def _with_counts(self, found: Found, pending: list[Any]) -> list[Message[Fields]]:
        counts = {p[0]["message_id"]: p[0] for p in pending if p}
        return [
            Message(i, f, NO_HEADERS, int(counts[i]["times_delivered"]), BROKER)
            for i, f in found
            if i in counts and counts[i]["consumer"] == self.consumer  # else not ours now
        ]


def entries(reply: Any) -> Found:
    """The entries of an ``XREADGROUP`` reply of one stream (a RESP2 list or a RESP3 map)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [s[1] for s in reply]
    # redis-py made each fields dict (decode_responses): no copy; None for a deleted entry.
    return [(i, f or {}) for found in streams for i, f in found]


def without_password(url: str) -> str:
    """``url`` without its password and query (which may hold one): what logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    with contextlib.suppress(ValueError):  # a bad port: the consumer's check() says so
        if parts.port is not None:
            netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
