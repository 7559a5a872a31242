"""Server adapters and the contract they implement (see :mod:`quiesce.servers.contract`).

The adapters import their framework and are imported only when used:
:mod:`~quiesce.servers.asgi` (uvicorn), :mod:`~quiesce.servers.grpc` (grpcio),
:mod:`~quiesce.servers.stream` (asyncio streams).
"""

from quiesce.servers.contract import BaseServer, Server

__all__ = ["BaseServer", "Server"]
