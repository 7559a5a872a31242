"""How the RabbitMQ consumer counts a message's deliveries and makes a copy of it to publish.

RabbitMQ counts deliveries only on quorum queues (``x-delivery-count``); a
classic queue says no more than ``redelivered``. So a retry does not
nack-requeue: it publishes a copy whose :data:`DELIVERIES` header carries the
deliveries so far (with publisher confirms), then acks the original. The count
a handler sees is then exact for handler failures, on any queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

__all__ = ["DELIVERIES", "ERROR", "QUEUE", "copy_of", "delivery_count", "headers_of"]

#: Header of a copy: the deliveries of the earlier copies of the message (written by a retry).
DELIVERIES = "x-quiesce-deliveries"
#: Header of a dead-lettered copy: what its last handler raised.
ERROR = "x-quiesce-error"
#: Header of a dead-lettered copy: the queue it was consumed from.
QUEUE = "x-quiesce-queue"
#: A quorum queue's count of the earlier deliveries of this copy (absent on the first one).
BROKER_COUNT = "x-delivery-count"
#: A dead-lettered copy's error header is cut to this many characters.
ERROR_MAX = 1000


def headers_of(incoming: AbstractIncomingMessage) -> dict[str, Any]:
    """The AMQP headers of a delivery, as a new dict."""
    return dict(incoming.headers or {})


def delivery_count(headers: Mapping[str, Any], redelivered: bool | None) -> int:
    """How many times the message has been delivered, this time included (1 the first time).

    The earlier copies' deliveries (``x-quiesce-deliveries``) plus this copy's:
    exact on a quorum queue (``x-delivery-count`` + 1); on a classic queue 2 when
    the broker says ``redelivered`` (it may have been more), else 1.
    """
    earlier = _whole(headers.get(DELIVERIES))
    if BROKER_COUNT in headers:
        return earlier + _whole(headers[BROKER_COUNT]) + 1
    return earlier + (2 if redelivered else 1)


def copy_of(incoming: AbstractIncomingMessage, headers: Mapping[str, Any]) -> aio_pika.Message:
    """A message to publish with the body and properties of ``incoming`` and these headers.

    The broker's own count is left out (it belongs to the delivery, not the message),
    and so is ``user_id``: the broker refuses one that is not the connection's user.
    """
    kept = {k: v for k, v in headers.items() if k != BROKER_COUNT}
    return aio_pika.Message(
        incoming.body,
        headers=kept,
        content_type=incoming.content_type,
        content_encoding=incoming.content_encoding,
        delivery_mode=incoming.delivery_mode,
        priority=incoming.priority,
        correlation_id=incoming.correlation_id,
        reply_to=incoming.reply_to,
        expiration=incoming.expiration,
        message_id=incoming.message_id,
        timestamp=incoming.timestamp,
        type=incoming.type,
        app_id=incoming.app_id,
    )


def _whole(value: object) -> int:
    """A header's count, 0 when it is missing or not a whole number (another client wrote it)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str | bytes) and value.strip().isdigit():
        return int(value)
    return 0
