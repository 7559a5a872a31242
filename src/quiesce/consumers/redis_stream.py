"""The Redis Streams consumer: one consumer of a group that loses no entry at the stop.

What becomes of an entry (docs/consumers_redis.md tells the whole story):

- read (``XREADGROUP``): pending in the group, owned by this consumer;
- its handler returned: ``XACK`` (the acks of one loop tick go in one call);
- its handler raised, deliveries left: it stays pending, and ``retry_delay`` later
  this consumer claims it again (``XCLAIM``, which counts a delivery) and reruns it;
- its handler raised on its ``max_deliveries``-th delivery: ``XADD`` to ``dead_letter``
  and ``XACK`` in one ``MULTI`` (or ``XACK`` alone, logged, when there is none);
- cut at the stop's deadline, or read and never started: it stays pending, made
  claimable at once by the other consumers of the group (``XCLAIM ... IDLE claim_idle
  JUSTID``, which does not count a delivery) and re-read by this consumer at its next
  start (``XREADGROUP ... 0``);
- left pending by a consumer that died: claimed after ``claim_idle`` (``XAUTOCLAIM``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from quiesce import config
from quiesce.consumers.consumer import Consumer
from quiesce.consumers.message import Handler, Message
from quiesce.consumers.redis_group import (
    NO_HEADERS,
    Fields,
    GroupCalls,
    entries,
    without_password,
)
from quiesce.errors import ConfigError

__all__ = ["Fields", "RedisStreamConsumer"]

logger = logging.getLogger("quiesce.lifecycle")


class RedisStreamConsumer(Consumer[Fields]):
    """Read ``stream`` as ``consumer`` of ``group`` and run ``handle`` on each entry.

    ``message.id`` is the entry id, ``message.body`` its fields, ``message.delivery_count``
    the group's count of its deliveries (1 for a new entry). The group is created when
    missing (``XGROUP CREATE ... MKSTREAM``). The consumer reads only as many entries as
    it has free handlers, so a clean stop leaves none of them pending.

    Args:
        handle: ``async def handle(message) -> None``; returning acks the entry.
        url: the Redis URL (``redis://[[user]:password@]host[:port][/db]``, ``rediss://``,
            ``unix://``).
        stream: the stream's key.
        group: the consumer group.
        consumer: this consumer's name in the group; None is the host name, so that a
            restart in place re-reads what it left pending. Give each of several
            processes on one host a name of its own that a restart keeps (a worker's
            index, not its pid): two running consumers must never share a name.
        concurrency: handlers at once, and the most entries it holds.
        claim_idle: an entry pending this long (seconds) is taken as its consumer's
            dead: any consumer of the group claims it. Longer than the longest handler.
        name: the server name (logs, the report).
        max_deliveries: the delivery on which a failing entry is dead-lettered.
        dead_letter: the stream a dead entry is added to (its fields, then
            ``dead_letter.id``, ``.stream``, ``.group``, ``.consumer``, ``.error`` and
            ``.deliveries``); None acks and drops it, with an ERROR log line.
        start_id: where a group this consumer creates begins: ``"0"`` (the default)
            reads the whole stream already there, ``"$"`` only what comes next.
        block: the longest wait of one blocking read (seconds).
        retry_delay: how long after its handler raised an entry runs again (seconds).
        stop_timeout: see :class:`~quiesce.Consumer`.
        connect_timeout: bound on connecting (and on creating the group).
        call_timeout: bound on every other call (the blocking read: ``block`` more).
        reconnect_max: the longest wait between two reconnect attempts.
        depends_on: servers (or resources) to start before this one.

    """

    broker = "redis"
    ack_never_waits = True  # _ack bounds its own wait: one bound for a batch of acks

    def __init__(
        self,
        handle: Handler[Fields],
        *,
        url: str,
        stream: str,
        group: str,
        consumer: str | None = None,
        concurrency: int = 16,
        claim_idle: float = 60.0,
        name: str = "redis-stream",
        max_deliveries: int = 5,
        dead_letter: str | None = None,
        start_id: str = "0",
        block: float = 2.0,
        retry_delay: float = 1.0,
        stop_timeout: float | None = None,
        connect_timeout: float = 10.0,
        call_timeout: float = 5.0,
        reconnect_max: float = 10.0,
        depends_on: Sequence[str] = (),
    ) -> None:
        super().__init__(
            handle,
            name=name,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            dead_letter=dead_letter,
            stop_timeout=stop_timeout,
            connect_timeout=connect_timeout,
            call_timeout=call_timeout,
            reconnect_max=reconnect_max,
            depends_on=depends_on,
        )
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = socket.gethostname() if consumer is None else consumer
        self.claim_idle = claim_idle
        self.start_id = start_id
        self.block = block
        self.retry_delay = retry_delay
        self._client: Redis | None = None  # every call but the blocking read (a pool)
        self._calls: GroupCalls | None = None  # ... made through this
        self._reader: Redis | None = None  # the blocking read's own connection
        self._reader_id: int | None = None  # its CLIENT ID
        self._read_until = 0.0  # when the blocking read under way times out
        self._cut_reader: int | None = None  # the CLIENT ID of a reader cut mid-read
        self._cursor: str | None = None  # re-reading our own pending entries from there
        self._recover = False  # after a reconnect: take what a cut read left pending
        self._waiting: dict[str, float] = {}  # entry id -> when its retry is due
        self._next_sweep = 0.0
        self._sweep_from = "0-0"
        self._batch: list[tuple[str, asyncio.Future[bool]]] | None = None  # acks to join

    def check(self) -> None:
        """Check the options.

        Raises:
            ConfigError: what :meth:`Consumer.check` refuses, an empty or non-string
                ``url``, ``stream``, ``group``, ``consumer`` or ``start_id``, a URL that
                is not a Redis one, a ``dead_letter`` that is the stream itself, a bad
                ``claim_idle``, ``block`` (1 ms at least) or ``retry_delay``.

        """
        super().check()
        where = f"consumer {self.name!r}"
        names: dict[str, object] = {"url": self.url, "stream": self.stream, "group": self.group}
        names |= {"consumer": self.consumer, "start_id": self.start_id}
        for option, value in names.items():
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: {option}={value!r} must be a non-empty string")
        if self.dead_letter == self.stream:
            raise ConfigError(f"{where}: dead_letter={self.dead_letter!r} is the stream itself")
        try:
            config.check_seconds({"claim_idle": self.claim_idle, "block": self.block})
            config.check_seconds({"retry_delay": self.retry_delay}, zero_ok=True)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if self.block < 0.001:  # BLOCK counts milliseconds, and BLOCK 0 waits for ever
            raise ConfigError(f"{where}: block={self.block!r}: must be 0.001 seconds or more")
        try:  # parses the URL and makes a connection object, which connects only when used
            ConnectionPool.from_url(self.url).make_connection()  # type: ignore[no-untyped-call]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: url {self._where()!r}: {exc}") from None

    def _where(self) -> str:
        return without_password(self.url)

    # -- connecting ------------------------------------------------------------

    def _new_client(self, *, retries: int, single: bool) -> Redis:
        # One retry on a connection error: a pooled connection the broker closed while
        # idle fails its next command once. No socket_timeout: with one, redis-py sends
        # through asyncio.wait_for, which on Python 3.11 often swallows a cancellation (the
        # stop's) that comes as the send completes. Every call is bounded here instead.
        retry = Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,))
        return Redis.from_url(
            self.url,
            single_connection_client=single,
            decode_responses=True,
            encoding_errors="surrogateescape",
            socket_timeout=None,
            socket_connect_timeout=self.connect_timeout,
            retry=retry,
        )

    async def _connect(self) -> None:
        if self._client is None:
            self._client = self._new_client(retries=1, single=False)
            # The reader fails at once: the base's backoff decides when to read again.
            self._reader = self._new_client(retries=0, single=True)
            self._calls = GroupCalls(self._client, self.stream, self.group, self.consumer)
        made = await self._group.create(self.start_id)
        if self._loop_task is not None and not self._loop_task.done():
            self._recover = True  # a reconnect: the lost read may have left entries pending
            return
        self._cursor, self._waiting, self._recover = "0", {}, False
        self._next_sweep, self._sweep_from, self._cut_reader = 0.0, "0-0", None
        logger.info(
            "consumer %s: %s group %r of stream %r as consumer %r",
            self.name,
            f"created (at {self.start_id})" if made else "joined",
            self.group,
            self.stream,
            self.consumer,
        )

    async def _close(self) -> None:
        reader, client = self._reader, self._client
        self._reader_id = None
        if reader is not None and reader.connection is not None:
            await reader.connection.disconnect(nowait=True)
        if self._loop_task is not None and not self._loop_task.done() and not self._stopping:
            # A reconnect: handlers still running ack through this pool; drop its idle
            # connections, which the broker may have closed.
            if client is not None:
                await client.connection_pool.disconnect(inuse_connections=False)
            return
        self._client = self._reader = self._calls = None
        for each in (client, reader):
            if each is not None:
                await each.aclose()

    @property
    def _group(self) -> GroupCalls:
        if self._calls is None:
            raise RedisConnectionError(f"consumer {self.name!r} is not connected")
        return self._calls

    # -- fetching --------------------------------------------------------------

    async def _fetch(self, limit: int) -> Sequence[Message[Fields]]:
        # Looked at before paying for a bound: most reads are of new entries only.
        due = bool(self._waiting) or time.monotonic() >= self._next_sweep
        if due or self._recover or self._cursor is not None:
            async with asyncio.timeout(self.call_timeout):
                taken = await self._take(limit)
            if taken is not None:
                return taken
        return await self._read_new(limit)

    async def _take(self, limit: int) -> list[Message[Fields]] | None:
        """What is there to take before new entries; None: nothing, read new ones."""
        if self._recover:
            left = await self._orphans(limit, keep_waiting=True)
            self._recover = len(left) == limit  # there may be more
            if taken := await self._group.claim([i for i, _ in left]):
                return taken
        now = time.monotonic()
        if due := [i for i, at in self._waiting.items() if at <= now][:limit]:
            for i in due:
                del self._waiting[i]  # if the claim is cut, a stop or a recovery finds them
            if taken := await self._group.claim(due):
                return taken
        if self._cursor is not None:
            return await self._read_own(limit)
        if now >= self._next_sweep and (taken := await self._sweep(limit)):
            return taken
        return None

    async def _read_own(self, limit: int) -> list[Message[Fields]]:
        """Re-read our own pending entries (at a start), from the cursor on."""
        assert self._cursor is not None
        found = await self._group.read_own(self._cursor, limit)
        if not found:
            self._cursor = None
            return []
        self._cursor = found[-1][0]
        return await self._counted(found)

    async def _read_new(self, limit: int) -> list[Message[Fields]]:
        """Wait for new entries, on the reader's own connection."""
        reader = self._reader
        if reader is None:
            raise RedisConnectionError(f"consumer {self.name!r} is not connected")
        now = time.monotonic()
        wait = min(self.block, self._next_sweep - now, *(t - now for t in self._waiting.values()))
        try:
            async with asyncio.timeout(wait + self.call_timeout):
                if self._reader_id is None:
                    self._reader_id = int(await reader.client_id())
                self._read_until = now + wait
                reply = await reader.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=limit,
                    block=max(1, round(wait * 1000)),
                )
        except BaseException:
            # Cut mid-reply (the stop's cancel, a timeout): the connection must never read
            # again, and the entries Redis sent it stay pending (see _orphans).
            self._cut_reader, self._reader_id = self._reader_id, None
            if reader.connection is not None:
                await reader.connection.disconnect(nowait=True)
            raise
        finally:
            self._read_until = 0.0
        return [Message(i, f, NO_HEADERS, 1, self.broker) for i, f in entries(reply) if f]

    async def _sweep(self, limit: int) -> list[Message[Fields]]:
        """Claim entries pending over ``claim_idle`` (their consumer died): one call a fetch."""
        self._sweep_from, found = await self._group.autoclaim(
            self.claim_idle, self._sweep_from, limit
        )
        done = self._sweep_from == "0-0"  # the whole pending list was looked at
        self._next_sweep = time.monotonic() + (self.claim_idle / 2 if done else 0.0)
        held = self._held(keep_waiting=True)
        found = [(i, f) for i, f in found if i not in held]  # ours, running: not again
        if found:
            logger.info(
                "consumer %s claimed %d entries pending over %gs: %s",
                self.name,
                len(found),
                self.claim_idle,
                " ".join(i for i, _ in found),
            )
        return await self._counted(found)

    async def _counted(self, found: list[tuple[str, Fields]]) -> list[Message[Fields]]:
        messages = await self._group.counted(found)
        if gone := [i for i, f in found if not f]:
            logger.warning(
                "consumer %s: entries %s were deleted from the stream while pending: acked",
                self.name,
                " ".join(gone),
            )
        return messages

    def _held(self, *, keep_waiting: bool) -> set[str]:
        held = {m.id for m in self._running.values()}
        return held | self._waiting.keys() if keep_waiting else held

    async def _orphans(self, limit: int, *, keep_waiting: bool) -> list[tuple[str, int]]:
        """Our pending entries that nothing here holds: a cut read's (or a waiting retry's).

        While re-reading our own pending entries, only those up to the cursor count:
        the rest were never read by this run.
        """
        if (cut := self._cut_reader) is not None:
            # Redis may not have seen that connection close yet, and would hand it more
            # entries after we looked: close it on Redis' side first.
            await self._group.kill(cut)
            self._cut_reader = None
        held = self._held(keep_waiting=keep_waiting)
        pending = await self._group.pending(self._cursor or "+", limit + len(held))
        return [(i, count) for i, count in pending if i not in held][:limit]

    # -- settling --------------------------------------------------------------

    async def _ack(self, message: Message[Fields]) -> bool:
        # The acks of the handlers that return in one tick go in one XACK, under one bound
        # (ack_never_waits: the base gives each ack no timer of its own).
        if self._batch is not None:  # another's XACK is about to go: join it
            waiter = asyncio.get_running_loop().create_future()
            self._batch.append((message.id, waiter))
            joined: bool = await waiter
            return joined
        batch: list[tuple[str, asyncio.Future[bool]]] = []
        self._batch = batch
        ok = False
        try:
            await asyncio.sleep(0)  # the others of this tick join
            self._batch = None
            ids = [message.id, *(i for i, _ in batch)]
            ok, _ = await self._bounded(self._group.ack(ids), f"ack of {' '.join(ids)}")
        finally:
            if self._batch is batch:  # cut before it was sent: none of them is acked
                self._batch = None
            # Each its own future, woken together: their handlers end in one tick and the
            # next read is for all the freed handlers, not for the first one.
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_result(ok)
        return ok

    async def _retry(self, message: Message[Fields]) -> None:
        if self._stopping:  # nothing reads any more: let the group have it at once
            await self._group.hand_back([message.id], self.claim_idle)
            return
        # It stays pending, ours; claiming it again when due counts the next delivery.
        due = self._waiting[message.id] = time.monotonic() + self.retry_delay
        if due < self._read_until and self._reader_id is not None:
            self._read_until = 0.0  # one unblock is enough
            await self._group.unblock(self._reader_id)  # to read again with the new due time

    async def _dead_letter(self, message: Message[Fields], error: str) -> None:
        if self.dead_letter is None:
            await self._group.ack([message.id])
        else:
            await self._group.dead_letter(self.dead_letter, message, error)

    async def _hand_back(self, messages: Sequence[Message[Fields]]) -> None:
        # Still ours (re-read at our next start), but idle as if claim_idle had passed:
        # the next sweep of any consumer of the group takes them.
        if messages:
            await self._group.hand_back([m.id for m in messages], self.claim_idle)

    async def _stop_fetching(self) -> Sequence[Message[Fields]]:
        # The fetch loop was cancelled already: what its read and the retries waiting
        # left pending goes back (the base hands it back and counts it).
        limit = 2 * self.concurrency + len(self._waiting)
        left = await self._orphans(limit, keep_waiting=False)
        self._waiting.clear()
        return [Message(i, {}, NO_HEADERS, count, self.broker) for i, count in left]
