"""One message a consumer took from its broker, as its handler sees it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Handler", "Message"]

B = TypeVar("B")


@dataclass(frozen=True, slots=True)
class Message(Generic[B]):
    """A message handed to a consumer's handler.

    The handler returning acknowledges it; the handler raising redelivers it
    (up to the consumer's ``max_deliveries``, then it is dead-lettered).
    """

    #: The broker's id: a Redis stream entry id (``"1700000000000-0"``), an AMQP message id
    #: (or its delivery tag when the publisher set none).
    id: str
    #: The payload: a stream entry's fields, an AMQP body.
    body: B
    #: The message's headers (AMQP headers; empty for a stream entry).
    headers: Mapping[str, Any]
    #: How many times the broker has delivered it, this time included (1 the first time).
    delivery_count: int
    #: Which kind of broker it came from: ``"redis"``, ``"rabbitmq"``.
    broker: str
    #: The adapter's own handle on the delivery (an aio-pika message...), for settling it.
    raw: Any = field(default=None, repr=False, compare=False)


#: What a consumer calls for each message: ``async def handle(message) -> None``.
Handler = Callable[[Message[B]], Awaitable[None]]
