"""`make demo`'s shop service works end to end and stops cleanly on Ctrl+C (SIGINT)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_shop_demo_serves_http_and_grpc_then_stops_cleanly_on_ctrl_c() -> None:
    http_port, grpc_port = free_port(), free_port()
    env = dict(
        os.environ,
        SHOP_HTTP_PORT=str(http_port),
        SHOP_GRPC_PORT=str(grpc_port),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT / "src"),
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples/shop/main.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "shop ready" in line:
                break
        else:
            raise AssertionError("".join(lines))
        created = httpx.post(f"http://127.0.0.1:{http_port}/orders", json={"item": "book"})
        assert created.status_code == 201
        sys.path.insert(0, str(ROOT / "examples/shop"))
        import shop_pb2
        import shop_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = shop_pb2_grpc.ShopStub(channel).PlaceOrder(
                shop_pb2.OrderRequest(item="pen", quantity=2), timeout=5
            )
        assert reply.item == "pen"
        assert reply.status == "accepted"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        lines.append(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sys.path[:] = [p for p in sys.path if p != str(ROOT / "examples/shop")]
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "receipt sent for order o-1 (book x1)" in output
    assert "receipt sent for order o-2 (pen x2)" in output
    assert "exit 0 (clean)" in output
