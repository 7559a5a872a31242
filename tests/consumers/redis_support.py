"""What the Redis consumer tests share: writing entries and reading the group's state."""

from __future__ import annotations

from typing import Any

import redis.asyncio


async def add(r: redis.asyncio.Redis, stream: str, n: int, **fields: str) -> list[str]:
    """XADD ``n`` entries (``n`` = their index, and ``fields``) in one round trip; their ids."""
    async with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            entry: dict[Any, Any] = {"n": str(i), **fields}
            _ = pipe.xadd(stream, entry)
        return [str(i) for i in await pipe.execute()]


async def pending(r: redis.asyncio.Redis, stream: str, group: str = "g") -> dict[str, Any]:
    """The group's pending entries by id (consumer, idle ms, deliveries)."""
    found = await r.xpending_range(stream, group, "-", "+", 100_000)
    return {str(p["message_id"]): p for p in found}


async def unread(r: redis.asyncio.Redis, stream: str, group: str = "g") -> int:
    """How many entries of the stream the group has not read yet (its lag)."""
    (info,) = [g for g in await r.xinfo_groups(stream) if g["name"] == group]
    return int(info["lag"])


def entry_ids(reply: Any) -> list[str]:
    """The entry ids of an XREADGROUP reply."""
    return [str(i) for _, found in reply for i, _ in found]
