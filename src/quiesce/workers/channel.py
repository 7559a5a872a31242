"""The control channel between the supervisor and one worker: JSON objects, one a line.

One end of a ``socketpair`` each. The supervisor writes the worker's *hello*
(its flags, folder and ports) before the worker even starts, so the worker
reads it at once and nothing of it shows in ``ps`` or the environment.
Every read is bounded in size and the blocking ones in time; a broken or
closed channel is an end (``None``), never an exception to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Mapping
from typing import Any

__all__ = ["HELLO_TIMEOUT", "MAX_LINE", "Channel", "pair", "receive_now", "send_now"]

#: The longest message either side accepts (a ready message is a few hundred bytes).
MAX_LINE = 1 << 20
#: How long a worker waits for its hello, which the supervisor wrote before starting it.
HELLO_TIMEOUT = 10.0

Message = dict[str, Any]


def pair() -> tuple[socket.socket, socket.socket]:
    """The supervisor's end and the worker's end of a new channel."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def _line(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def send_now(sock: socket.socket, message: Mapping[str, Any]) -> bool:
    """Write ``message`` on a blocking socket; False when the other end is gone."""
    try:
        sock.sendall(_line(message))
    except OSError:
        return False
    return True


def receive_now(sock: socket.socket, timeout: float = HELLO_TIMEOUT) -> Message | None:
    """Read one message from a blocking socket within ``timeout``; None at its end or a bad line.

    Byte by byte: what follows the line stays in the socket for the event loop's reader.
    """
    sock.settimeout(timeout)
    data = bytearray()
    try:
        while len(data) < MAX_LINE:
            byte = sock.recv(1)
            if not byte:
                return None
            if byte == b"\n":
                return _decoded(bytes(data))
            data += byte
    except OSError:  # a timeout too: a hello that never came
        return None
    finally:
        sock.settimeout(None)
    return None


def _decoded(line: bytes) -> Message | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


class Channel:
    """One end of a control channel in the running event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        """The channel over ``sock`` (made non-blocking, owned by the channel from now on)."""
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer)

    def send(self, message: Mapping[str, Any]) -> bool:
        """Queue ``message``; False when the other end is gone (it is not sent then)."""
        if self._writer.is_closing():
            return False
        try:
            self._writer.write(_line(message))
        except (OSError, RuntimeError):
            return False
        return True

    async def receive(self) -> Message | None:
        """The next message; None once the other end has closed (or sent garbage)."""
        try:
            line = await self._reader.readline()
        except (OSError, ValueError):  # reset, or a line over MAX_LINE
            return None
        return _decoded(line) if line else None

    def close(self) -> None:
        """Close this end; the other sees the end of the channel."""
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()
