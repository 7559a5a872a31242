"""Queue consumers: servers without a listener that lose no message at the stop.

:class:`Consumer` is the broker-neutral part (the fetch loop, the handlers,
the retry policy, the stop); each broker's adapter lives in a module of its
own and imports its client library only there: :mod:`.redis_stream`
(``quiesce[redis]``), :mod:`.rabbitmq` (``quiesce[rabbitmq]``).
"""

from __future__ import annotations

from quiesce.consumers.consumer import Consumer
from quiesce.consumers.message import Handler, Message

__all__ = ["Consumer", "Handler", "Message"]
