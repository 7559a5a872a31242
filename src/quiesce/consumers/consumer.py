"""The :class:`Consumer`: a server kind without a listener, that loses no message at the stop.

A fetch loop takes at most as many messages as it has free handlers and
runs each handler as a task. A handler that returns acknowledges its
message; one that raises redelivers it, up to ``max_deliveries``, then
dead-letters it. At the stop the consumer stops fetching at once, lets the
running handlers finish within its stop timeout, hands back every message
it took but did not start, and at the timeout cuts the handlers still
running and hands their messages back too, naming each. A message is never
acknowledged unless its handler returned.

An adapter (Redis Streams, RabbitMQ) subclasses :class:`Consumer` and
implements the broker calls: ``_connect``, ``_fetch``, ``_ack``, ``_retry``,
``_dead_letter``, ``_hand_back``, ``_stop_fetching`` and ``_close``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Generic, TypeVar

from quiesce.backoff import backoff_delay
from quiesce.consumers.message import Handler, Message
from quiesce.consumers.options import check_consumer
from quiesce.errors import StartError, describe
from quiesce.phases import Deadline
from quiesce.servers.contract import BaseServer

__all__ = ["Consumer"]

logger = logging.getLogger("quiesce.lifecycle")

B = TypeVar("B")
T = TypeVar("T")

#: After the stop timeout: how long cut handlers get to unwind once cancelled.
CANCEL_GRACE = 0.05
#: After the stop timeout: the bound on handing the cut messages back and closing. The App
#: bounds a server's stop() at its timeout plus 0.25 s; these fit inside that margin.
FINAL_CALLS = 0.15
#: The first reconnect waits about this long; each failure in a row doubles it.
RECONNECT_FIRST = 0.1


class Consumer(BaseServer, Generic[B]):
    """Take messages from a broker and run ``handle`` on each, ``concurrency`` at a time.

    Args:
        handle: ``async def handle(message) -> None``; returning acknowledges the
            message, raising redelivers it (see ``max_deliveries``).
        name: the server name (logs, the report, ``depends_on``).
        concurrency: how many handlers run at once, and how many messages the
            consumer holds at most (it fetches only for free handlers).
        max_deliveries: a message whose handler raised on its ``max_deliveries``-th
            delivery is dead-lettered instead of redelivered.
        dead_letter: where dead-lettered messages go (a stream, a queue); None drops
            them with an ERROR log line naming each.
        stop_timeout: how long running handlers get at the stop (None: what is left
            of the app's stop budget); then they are cut and their messages handed back.
        connect_timeout: bound on connecting (at the start and on each reconnect).
        call_timeout: bound on every other broker call (an ack, a requeue); at the
            stop, also within the stop timeout.
        reconnect_max: the longest wait between two reconnect attempts (jittered,
            doubling from 0.1 s); a lost broker is retried for as long as the app runs.
        depends_on: servers (or resources) to start before this one.

    """

    #: The broker kind, as :attr:`Message.broker` says it.
    broker = "broker"
    #: True when ``_ack`` never waits on the broker (it queues the frame), or bounds its
    #: own wait (Redis: one bound for the acks of a tick, sent in one XACK, within
    #: ``call_timeout`` and the stop's deadline): it is then awaited as it is, without a
    #: timeout of its own (one per message costs ~4 us).
    ack_never_waits = False

    def __init__(
        self,
        handle: Handler[B],
        *,
        name: str,
        concurrency: int = 16,
        max_deliveries: int = 5,
        dead_letter: str | None = None,
        stop_timeout: float | None = None,
        connect_timeout: float = 10.0,
        call_timeout: float = 5.0,
        reconnect_max: float = 10.0,
        depends_on: Sequence[str] = (),
    ) -> None:
        self.handle = handle
        self.name = name
        self.concurrency = concurrency
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter
        self.stop_timeout = stop_timeout
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.reconnect_max = reconnect_max
        self.depends_on = tuple(depends_on)

        self.fetched = self.acked = self.failed = self.retried = 0
        self.dead_lettered = self.dropped = self.requeued = self.unacked = 0
        #: Ids of the messages whose handlers the stop timeout cut (handed back).
        self.cut: list[str] = []
        self.connected = False
        self._draining = False
        self._stopping = False
        self._deadline: Deadline | None = None  # the stop's, once it began
        self._running: dict[asyncio.Task[None], Message[B]] = {}
        self._handling: set[asyncio.Task[None]] = set()  # running the handler, not settling
        self._slot_freed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    # -- the adapter's part ----------------------------------------------------

    async def _connect(self) -> None:
        """Connect, create what is missing (a group, a queue) and be ready to fetch."""
        raise NotImplementedError

    async def _fetch(self, limit: int) -> Sequence[Message[B]]:
        """Wait for up to ``limit`` messages (an empty list after a while is fine).

        It is cancelled at the stop: a cancelled fetch must leave the client usable
        and must not lose what the broker sent meanwhile (leave it pending).
        """
        raise NotImplementedError

    async def _ack(self, message: Message[B]) -> bool:
        """Acknowledge; False when it cannot be (its channel is gone: it comes back)."""
        raise NotImplementedError

    async def _retry(self, message: Message[B]) -> None:
        """The handler raised: have the broker deliver it again, its count one higher."""
        raise NotImplementedError

    async def _dead_letter(self, message: Message[B], error: str) -> None:
        """Move it to :attr:`dead_letter` (or drop it when None): never delivered again."""
        raise NotImplementedError

    async def _hand_back(self, messages: Sequence[Message[B]]) -> None:
        """Give messages that were taken but not finished back for another delivery."""
        raise NotImplementedError

    async def _stop_fetching(self) -> Sequence[Message[B]]:
        """Tell the broker to stop sending; return what arrived but was never handed out."""
        return ()

    async def _close(self) -> None:
        """Close the connection (also called before a reconnect)."""
        raise NotImplementedError

    def _where(self) -> str:
        """The broker as the logs name it, with no password (``redis://127.0.0.1:6379``)."""
        return self.broker

    # -- the server contract ---------------------------------------------------

    def check(self) -> None:
        """Check the options.

        Raises:
            ConfigError: a handler that is not an ``async def``, a concurrency or
                ``max_deliveries`` that is not a positive whole number, a bad timeout.

        """
        check_consumer(self)

    async def start(self) -> None:
        """Connect and begin fetching.

        Raises:
            StartError: the broker refused or did not answer within ``connect_timeout``.

        """
        part = f"server {self.name!r}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._connect()
        except TimeoutError:
            await self._close_quietly()
            cause = f"{self._where()} did not answer within {self.connect_timeout:g}s"
            raise StartError(part, cause) from None
        except Exception as exc:
            await self._close_quietly()
            raise StartError(part, f"{self._where()}: {describe(exc)}") from exc
        self.connected = True
        self._loop_task = asyncio.create_task(self._fetch_loop(), name=f"quiesce {self.name}")
        logger.info("consumer %s fetching from %s", self.name, self._where())

    async def drain(self) -> None:
        """Report not ready; keep handling (the fetching stops at :meth:`stop`)."""
        self._draining = True

    @property
    def ready(self) -> bool:
        """Connected and not draining."""
        return self.connected and not self._draining and not self._stopping

    @property
    def in_flight(self) -> int:
        """Messages taken and not yet settled."""
        return len(self._running)

    async def wait_closed(self) -> None:
        """Return (or raise) if the fetch loop ends without being told to."""
        if self._loop_task is None:
            return
        await asyncio.wait([self._loop_task])  # the watcher's cancellation must not reach it
        if not self._loop_task.cancelled() and (exc := self._loop_task.exception()) is not None:
            raise exc

    def account(self) -> dict[str, int | list[str]]:
        """What happened to each message taken: the report's line for this consumer."""
        return {
            "fetched": self.fetched,
            "acked": self.acked,
            "failed": self.failed,
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            "dropped": self.dropped,
            "requeued_not_started": self.requeued,
            "requeued_cut": list(self.cut),
            "unacked": self.unacked,
        }

    async def stop(self, timeout: float) -> Sequence[str]:
        """Stop fetching at once, finish running handlers within ``timeout``, hand back the rest.

        Returns one line per message whose handler was cut (handed back for another
        delivery); messages taken but not started are handed back and counted, not cut.
        """
        self._stopping = True
        deadline = self._deadline = Deadline(timeout)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait([self._loop_task], timeout=max(deadline.remaining(), CANCEL_GRACE))
        if self.connected:
            _, left = await self._bounded(self._stop_fetching(), "stop fetching", deadline)
            if left:
                await self._bounded(self._hand_back(left), "hand back", deadline)
                self.requeued += len(left)
        if self._running:
            await asyncio.wait(set(self._running), timeout=deadline.remaining())
        cut = [self._running[task] for task in self._handling]
        # Handlers that returned but whose ack has not: it may not reach the broker.
        self.unacked += len(self._running) - len(cut)
        for task in self._running:
            task.cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=CANCEL_GRACE)
        end = Deadline(FINAL_CALLS)
        if cut:
            self.cut.extend(m.id for m in cut)
            await self._bounded(self._hand_back(cut), "hand back the cut messages", end)
        await self._bounded(self._close(), "close", end)
        self.connected = False
        return [f"message {m.id} [handler cut at {timeout:.3g}s, handed back]" for m in cut]

    # -- the fetch loop --------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while True:
            while len(self._running) >= self.concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            try:
                messages = await self._fetch(self.concurrency - len(self._running))
            except Exception as exc:
                failures += 1
                self.connected = False
                await self._reconnect(exc, failures)
                continue
            if failures:
                logger.info("consumer %s reconnected to %s", self.name, self._where())
                failures = 0
            for message in messages:
                self._dispatch(message)

    async def _reconnect(self, exc: Exception, failures: int) -> None:
        """Wait (jittered, doubling), then connect again; a failure is the next one's cause."""
        pause = backoff_delay(failures, first=RECONNECT_FIRST, cap=self.reconnect_max)
        logger.warning(
            "consumer %s lost %s (%s); reconnecting in %.2fs (attempt %d)",
            self.name,
            self._where(),
            describe(exc),
            pause,
            failures,
        )
        await self._close_quietly()
        await asyncio.sleep(pause)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._connect()
        except Exception as error:  # the next fetch fails too and counts it
            logger.debug("consumer %s: connect failed: %s", self.name, describe(error))
            return
        self.connected = True

    def _dispatch(self, message: Message[B]) -> None:
        self.fetched += 1
        task = asyncio.create_task(self._run(message), name=f"{self.name} {message.id}")
        self._running[task] = message
        self._handling.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._handling.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("consumer %s: settling failed: %s", self.name, describe(exc), exc_info=exc)

    async def _run(self, message: Message[B]) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            await self.handle(message)
        except Exception as exc:
            self._handling.discard(task)
            await self._failed(message, exc)
            return
        self._handling.discard(task)
        acked: bool | None
        if self.ack_never_waits:
            try:
                acked = await self._ack(message)
            except Exception as exc:
                logger.warning("consumer %s: ack failed: %s", self.name, describe(exc))
                acked = False
        else:
            _, acked = await self._bounded(self._ack(message), f"ack of message {message.id}")
        if acked:
            self.acked += 1
        else:
            self.unacked += 1
            logger.warning(
                "consumer %s: message %s was handled but cannot be acknowledged: "
                "the broker will deliver it again",
                self.name,
                message.id,
            )

    async def _failed(self, message: Message[B], exc: Exception) -> None:
        self.failed += 1
        count, most = message.delivery_count, self.max_deliveries
        if count < most:
            logger.warning(
                "consumer %s: message %s failed (delivery %d of %d): %s; delivering it again",
                self.name,
                message.id,
                count,
                most,
                describe(exc),
            )
            ok, _ = await self._bounded(self._retry(message), f"retry of message {message.id}")
            self.retried += ok  # else it comes back on its own (left pending, unacked)
            return
        where = f"dead-lettered to {self.dead_letter}" if self.dead_letter else "dropped"
        logger.error(
            "consumer %s: message %s %s after %d deliveries: %s",
            self.name,
            message.id,
            where if self.dead_letter else f"{where} (no dead_letter set)",
            count,
            describe(exc),
        )
        ok, _ = await self._bounded(
            self._dead_letter(message, describe(exc)), f"dead-letter of message {message.id}"
        )
        if not ok:
            self.unacked += 1  # it comes back, and fails its last delivery again
        elif self.dead_letter:
            self.dead_lettered += 1
        else:
            self.dropped += 1

    # -- helpers ---------------------------------------------------------------

    async def _bounded(
        self, call: Awaitable[T], what: str, deadline: Deadline | None = None
    ) -> tuple[bool, T | None]:
        """Await a broker call within ``call_timeout`` (and the stop's deadline).

        Returns whether it completed, and its result. A call that fails or is cut
        is logged: what it concerned comes back from the broker.
        """
        bound = self.call_timeout
        if (deadline := deadline or self._deadline) is not None:
            bound = min(bound, deadline.remaining())
        began = time.monotonic()
        try:
            async with asyncio.timeout(bound):
                return True, await call
        except TimeoutError:
            took = time.monotonic() - began
            logger.warning("consumer %s: %s cut after %.3fs", self.name, what, took)
        except Exception as exc:
            logger.warning("consumer %s: %s failed: %s", self.name, what, describe(exc))
        return False, None

    async def _close_quietly(self) -> None:
        await self._bounded(self._close(), "close", Deadline(self.call_timeout))
