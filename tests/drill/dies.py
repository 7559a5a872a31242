"""A server that dies of SIGTERM with requests in flight: ``python dies.py PORT``.

The standard library's HTTP server, one thread a request, each taking
:data:`WORK` seconds; SIGTERM keeps its default action, so whatever it was
answering is cut (the clients see the connection reset).
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Seconds each request takes: long enough that every client has one in flight.
WORK = 0.2


class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        time.sleep(WORK)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: one line a request is noise here


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
