"""Small idle servers whose SIGTERM-to-exit time the stop benchmarks compare.

``python bench/stop_targets.py KIND PORT`` where KIND is one of :data:`KINDS`.
"""

from __future__ import annotations

import asyncio
import sys


def quiesce_stream(port: int) -> None:
    from quiesce import App
    from quiesce.servers.stream import StreamServer

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)

    App(name="bench", servers=[StreamServer(echo, port=port)]).run()


def aiohttp_app(port: int) -> None:
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


KINDS = {"quiesce-stream": quiesce_stream, "aiohttp": aiohttp_app}

if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    KINDS[sys.argv[1]](int(sys.argv[2]))
