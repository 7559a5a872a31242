"""The admin server: the app's metrics, health, readiness and task dump on a port of its own.

An :class:`~quiesce.HTTPServer` (uvicorn, the same start, stop and probes)
whose ASGI app is the admin endpoints. It stops after every other server of
the app (:class:`~quiesce.servers.contract.StopsLast`), so that a scrape
during the drain and during the other servers' stop still answers. Its own
requests are not traffic: they never hold an adaptive drain open.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence

from quiesce.lifecycle import Lifecycle
from quiesce.metrics import CONTENT_TYPE, Metrics
from quiesce.servers.asgi import HTTPServer
from quiesce.servers.gate import Receive, Scope, Send

__all__ = ["AdminServer"]

logger = logging.getLogger("quiesce.admin")

_TEXT = "text/plain; charset=utf-8"

#: What an endpoint answers: status, body, content type.
Answer = tuple[int, bytes, str]


class AdminServer(HTTPServer):
    """The admin endpoints of the app, as a :class:`~quiesce.Server`.

    ``GET /metrics``: the app's :class:`~quiesce.metrics.Metrics` in
    Prometheus' text format; ``/healthz`` and ``/readyz``: as
    :class:`~quiesce.HTTPServer` answers them (ready with the app);
    ``/debug/tasks``: every task of the app's loop with its await chain, as
    text. Anything else is 404, a method other than GET 405. No endpoint
    changes the run. Binds loopback by default; another host is allowed with a
    warning (the task dump shows the code's insides). Stops after every other
    server of the app, whatever ``depends_on`` says.

    Raises (from :meth:`start`):
        StartError: the port cannot be bound.
    """

    #: Stop after every other server: metrics answer until the others have stopped.
    stops_last = True
    #: A scrape is not traffic (as a readiness probe is not): it never holds a drain open.
    counts_arrivals = False

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 9090,
        name: str = "admin",
        depends_on: Sequence[str] = (),
        stop_timeout: float | None = None,
    ) -> None:
        super().__init__(
            self._respond,
            host=host,
            port=port,
            name=name,
            depends_on=depends_on,
            stop_timeout=stop_timeout,
            # A scrape every few seconds is not worth a log line; there is no lifespan.
            access_log=False,
            lifespan="off",
        )
        #: The app's metrics once attached (None before); add your own to ``metrics.registry``.
        self.metrics: Metrics | None = None
        self._routes: dict[str, Callable[[], Answer]] = {
            "/metrics": self._metrics,
            "/debug/tasks": self._tasks,
        }

    def check(self) -> None:
        """Check the options; warn once when the host is not a loopback address.

        Raises:
            ConfigError: a bad address or stop timeout.

        """
        super().check()
        if not _is_loopback(self.host):
            logger.warning(
                "%s listens on %s, not a loopback address: its metrics and task dump "
                "are open to whoever can reach it",
                self.where,
                self.address,
            )

    def attach(self, lifecycle: Lifecycle) -> None:
        """Serve the metrics of ``lifecycle``'s app, and add them to its observers.

        Raises:
            ConfigError: another App is running this server.

        """
        again = self.lifecycle is lifecycle and self.metrics is not None
        super().attach(lifecycle)
        if not again:  # checked, then run: one set of metrics per app
            self.metrics = Metrics(lifecycle)
            lifecycle.observers.add(self.metrics)

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # a WebSocket: refused (uvicorn answers 403)
            await send({"type": "websocket.close"})
            return
        route = self._routes.get(scope["path"])
        headers = [(b"cache-control", b"no-store")]
        if route is None:
            status, body, content_type = 404, b"not found\n", _TEXT
        elif scope["method"] != "GET":
            status, body, content_type = 405, b"method not allowed\n", _TEXT
            headers.append((b"allow", b"GET"))
        else:
            status, body, content_type = route()
        headers += [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _metrics(self) -> Answer:
        if self.metrics is None:
            return _NOT_ATTACHED
        return 200, self.metrics.render(), CONTENT_TYPE

    def _tasks(self) -> Answer:
        if self.lifecycle is None:
            return _NOT_ATTACHED
        return 200, (self.lifecycle.dump_tasks() + "\n").encode(), _TEXT


_NOT_ATTACHED: Answer = (503, b"not serving an App\n", _TEXT)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False
