"""The broker-neutral Consumer: its fetch loop, retry policy and stop, on an in-memory broker.

The broker here is a fake on purpose: these tests pin the base's own logic
(what is fetched, acked, retried, handed back and cut, and when). The
adapters' tests run the same guarantees against real Redis and RabbitMQ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx
import pytest

import quiesce
from consumers.polling import wait_until
from quiesce.consumers import Consumer, Message


class MemoryConsumer(Consumer[str]):
    """A consumer of an in-memory queue that records every broker call."""

    broker = "memory"

    def __init__(self, handle: Callable[[Message[str]], Awaitable[None]], **kw: object) -> None:
        kw.setdefault("name", "memory")
        super().__init__(handle, **kw)  # type: ignore[arg-type]
        self.queue: list[Message[str]] = []
        self.arrived = asyncio.Event()
        self.calls: list[tuple[str, str]] = []
        self.limits: list[int] = []
        self.connects = 0
        self.fail_fetches = 0
        self.connect_hangs = False
        self.buffered: list[Message[str]] = []

    def put(self, *ids: str, count: int = 1) -> None:
        self.queue.extend(Message(i, f"body {i}", {}, count, "memory") for i in ids)
        self.arrived.set()

    async def _connect(self) -> None:
        self.connects += 1
        if self.connect_hangs:
            await asyncio.sleep(3600)

    async def _fetch(self, limit: int) -> Sequence[Message[str]]:
        self.limits.append(limit)
        if self.fail_fetches:
            self.fail_fetches -= 1
            raise ConnectionError("connection reset by peer")
        if not self.queue:
            self.arrived.clear()
            try:
                async with asyncio.timeout(0.05):
                    await self.arrived.wait()
            except TimeoutError:
                return []
        taken, self.queue = self.queue[:limit], self.queue[limit:]
        return taken

    async def _ack(self, message: Message[str]) -> bool:
        self.calls.append(("ack", message.id))
        return True

    async def _retry(self, message: Message[str]) -> None:
        self.calls.append(("retry", message.id))

    async def _dead_letter(self, message: Message[str], error: str) -> None:
        self.calls.append(("dead_letter", message.id))

    async def _hand_back(self, messages: Sequence[Message[str]]) -> None:
        self.calls.extend(("hand_back", m.id) for m in messages)

    async def _stop_fetching(self) -> Sequence[Message[str]]:
        self.calls.append(("stop_fetching", ""))
        return self.buffered

    async def _close(self) -> None:
        self.calls.append(("close", ""))

    def ids(self, call: str) -> list[str]:
        return [i for c, i in self.calls if c == call]


async def test_a_clean_stop_acks_every_message_it_took_and_fetches_nothing_more() -> None:
    started: list[str] = []

    async def handle(message: Message[str]) -> None:
        started.append(message.id)
        await asyncio.sleep(0.2)

    consumer = MemoryConsumer(handle, concurrency=4)
    consumer.put(*(f"m{i}" for i in range(100)))
    await consumer.start()
    await wait_until(lambda: len(started) == 4)
    cut = await consumer.stop(5.0)
    assert cut == []
    assert sorted(consumer.ids("ack")) == sorted(started) == ["m0", "m1", "m2", "m3"]
    assert len(consumer.queue) == 96  # the stop fetched nothing more
    assert consumer.calls.index(("stop_fetching", "")) < consumer.calls.index(("ack", "m0"))
    assert consumer.calls[-1] == ("close", "")
    assert consumer.account()["fetched"] == consumer.account()["acked"] == 4


async def test_it_fetches_only_for_free_handlers() -> None:
    running = 0
    most = 0

    async def handle(message: Message[str]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    consumer = MemoryConsumer(handle, concurrency=3)
    consumer.put(*(f"m{i}" for i in range(30)))
    await consumer.start()
    await wait_until(lambda: consumer.acked == 30)
    await consumer.stop(1.0)
    assert most == 3
    assert max(consumer.limits) == 3
    assert all(1 <= n <= 3 for n in consumer.limits)


async def test_a_handler_past_the_stop_timeout_is_cut_named_and_handed_back_never_acked() -> None:
    gate = asyncio.Event()

    async def handle(message: Message[str]) -> None:
        if message.id == "slow":
            await asyncio.sleep(3600)
        gate.set()

    consumer = MemoryConsumer(handle, concurrency=4)
    consumer.put("fast", "slow")
    await consumer.start()
    await wait_until(lambda: consumer.acked == 1 and consumer.in_flight == 1)
    began = time.monotonic()
    cut = await consumer.stop(0.2)
    took = time.monotonic() - began
    assert cut == ["message slow [handler cut at 0.2s, handed back]"]
    assert consumer.ids("hand_back") == ["slow"]
    assert consumer.ids("ack") == ["fast"]
    assert consumer.account()["requeued_cut"] == ["slow"]
    assert 0.2 <= took < 0.2 + 0.25  # inside the margin the App gives a server's stop()


async def test_what_arrived_but_was_not_started_is_handed_back_and_counted_not_cut() -> None:
    async def handle(message: Message[str]) -> None:
        await asyncio.sleep(0.05)

    consumer = MemoryConsumer(handle)
    consumer.buffered = [Message(i, "", {}, 1, "memory") for i in ("late1", "late2")]
    await consumer.start()
    assert await consumer.stop(1.0) == []
    assert consumer.ids("hand_back") == ["late1", "late2"]
    assert consumer.account()["requeued_not_started"] == 2
    assert consumer.ids("ack") == []


async def test_a_failing_handler_is_retried_then_dead_lettered_never_acked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handle(message: Message[str]) -> None:
        raise ValueError(f"cannot parse {message.body}")

    consumer = MemoryConsumer(handle, max_deliveries=3, dead_letter="orders.dead")
    consumer.put("early", count=1)
    consumer.put("last", count=3)
    with caplog.at_level(logging.WARNING, "quiesce.lifecycle"):
        await consumer.start()
        await wait_until(lambda: consumer.failed == 2)
        await consumer.stop(1.0)
    assert consumer.ids("retry") == ["early"]
    assert consumer.ids("dead_letter") == ["last"]
    assert consumer.ids("ack") == []
    account = consumer.account()
    assert (account["retried"], account["dead_lettered"], account["dropped"]) == (1, 1, 0)
    failed = "message early failed (delivery 1 of 3): ValueError: cannot parse body early"
    assert failed in caplog.text
    assert "message last dead-lettered to orders.dead after 3 deliveries" in caplog.text


async def test_with_no_dead_letter_the_message_is_dropped_with_an_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handle(message: Message[str]) -> None:
        raise RuntimeError("poison")

    consumer = MemoryConsumer(handle)  # max_deliveries defaults to 5
    consumer.put("p", count=5)
    with caplog.at_level(logging.ERROR, "quiesce.lifecycle"):
        await consumer.start()
        await wait_until(lambda: consumer.failed == 1)
        await consumer.stop(1.0)
    assert consumer.account()["dropped"] == 1
    assert [r.levelname for r in caplog.records if "message p dropped" in r.message] == ["ERROR"]


async def test_a_lost_connection_is_retried_with_backoff_and_fetching_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handle(message: Message[str]) -> None:
        pass

    consumer = MemoryConsumer(handle)
    consumer.fail_fetches = 3
    consumer.put("a", "b")
    with caplog.at_level(logging.INFO, "quiesce.lifecycle"):
        await consumer.start()
        await wait_until(lambda: consumer.acked == 2)
        await consumer.stop(1.0)
    assert consumer.connects == 4  # the start and one per failure
    lost = [r.message for r in caplog.records if "reconnecting in" in r.message]
    assert len(lost) == 3
    assert "lost memory (ConnectionError: connection reset by peer)" in lost[0]
    assert "(attempt 3)" in lost[2]
    assert any("reconnected to memory" in r.message for r in caplog.records)


async def test_a_stop_during_a_hung_reconnect_is_bounded() -> None:
    async def handle(message: Message[str]) -> None:
        pass

    consumer = MemoryConsumer(handle)
    await consumer.start()
    consumer.connect_hangs = True
    consumer.fail_fetches = 1
    await wait_until(lambda: consumer.connects == 2)
    began = time.monotonic()
    assert await consumer.stop(0.5) == []
    assert time.monotonic() - began < 0.5


async def test_a_broker_that_does_not_answer_at_the_start_fails_it_in_one_line() -> None:
    async def handle(message: Message[str]) -> None:
        pass

    consumer = MemoryConsumer(handle, connect_timeout=0.2)
    consumer.connect_hangs = True
    with pytest.raises(quiesce.StartError) as caught:
        await consumer.start()
    assert str(caught.value) == "server 'memory' failed to start: memory did not answer within 0.2s"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"concurrency": 0}, "concurrency=0 must be a whole number 1..10000"),
        ({"concurrency": 2.5}, "concurrency=2.5 must be a whole number"),
        ({"max_deliveries": True}, "max_deliveries=True must be a whole number"),
        ({"dead_letter": ""}, "dead_letter='' must be a name or None"),
        ({"call_timeout": -1}, "call_timeout=-1"),
        ({"stop_timeout": "5"}, "stop_timeout='5'"),
    ],
)
async def test_bad_options_are_a_bad_configuration(options: dict[str, object], error: str) -> None:
    async def handle(message: Message[str]) -> None:
        pass

    app = quiesce.App(name="consumers", servers=[MemoryConsumer(handle, **options)])
    report = await app.serve()
    assert report.exit_code == quiesce.ExitCode.CONFIG
    assert report.error is not None
    assert error in report.error
    assert report.error.startswith("consumer 'memory': ")


async def test_a_handler_that_is_not_async_is_a_bad_configuration() -> None:
    def handle(message: Message[str]) -> None:
        pass

    consumer = MemoryConsumer(handle)  # type: ignore[arg-type]
    app = quiesce.App(name="consumers", servers=[consumer])
    report = await app.serve()
    assert report.exit_code == quiesce.ExitCode.CONFIG
    assert report.error is not None
    assert "must be an async function" in report.error


async def test_by_default_a_consumer_gets_the_apps_stop_budget_and_the_report_names_it() -> None:
    async def handle(message: Message[str]) -> None:
        await asyncio.sleep(3600)

    consumer = MemoryConsumer(handle)  # no stop_timeout: the app's budget
    consumer.put("stuck-1")
    app = quiesce.App(name="consumers", servers=[consumer], stop_timeout=1.0)

    async def stop_once_handling() -> None:
        await wait_until(lambda: consumer.in_flight == 1)
        app.stop("test")

    stopper = asyncio.create_task(stop_once_handling())
    report = await app.serve()
    await stopper
    assert report.exit_code == quiesce.ExitCode.INCOMPLETE
    step = report.step("stop_servers")
    assert len(step.cut) == 1
    assert step.cut[0].startswith("server memory: message stuck-1 [handler cut at 0.")
    assert report.accounts["memory"]["requeued_cut"] == ["stuck-1"]
    assert "memory: fetched 1, acked 0" in report.to_text()
    assert "requeued cut 1 (stuck-1)" in report.to_text()
    assert report.stop_duration < 1.0 + 0.3


async def test_a_consumer_without_its_broker_makes_readyz_503_and_the_metrics_say_so() -> None:
    async def handle(message: Message[str]) -> None:
        pass

    consumer = MemoryConsumer(handle, name="orders")
    admin = quiesce.AdminServer(port=0)
    app = quiesce.App(name="consumers", servers=[consumer, admin])
    seen: list[httpx.Response] = []

    @app.after_start
    async def probe() -> None:
        base = admin.endpoints()[0]
        async with httpx.AsyncClient() as client:
            consumer.put("m1")
            await wait_until(lambda: consumer.acked == 1)
            seen.append(await client.get(f"{base}/readyz"))
            seen.append(await client.get(f"{base}/metrics"))
            consumer.connect_hangs = True
            consumer.fail_fetches = 1
            await wait_until(lambda: consumer.connects == 2)
            seen.append(await client.get(f"{base}/readyz"))
            seen.append(await client.get(f"{base}/metrics"))
        app.stop("test")

    report = await app.serve()
    assert report.exit_code == quiesce.ExitCode.OK
    ready, metrics, lost, lost_metrics = seen
    assert ready.status_code == 200
    assert 'quiesce_server_ready{server="orders"} 1.0' in metrics.text
    assert 'quiesce_messages_total{outcome="acked",server="orders"} 1.0' in metrics.text
    assert lost.status_code == 503
    assert lost.json() == {"status": "not ready", "state": "running", "not_ready": ["orders"]}
    assert 'quiesce_server_ready{server="orders"} 0.0' in lost_metrics.text
