"""The examples work end to end and stop cleanly on Ctrl+C: the shop (`make demo`), orders.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx

from conftest import free_ports

ROOT = Path(__file__).resolve().parents[2]


def start_example(script: str, ready: str, **env: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Run ``examples/<script>`` with the repo's sources; return once it logs ``ready``."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / script)],
        env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT / "src"), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if ready in line:
            return proc, lines
    proc.wait(timeout=10)
    raise AssertionError(f"{script} exited before it was ready:\n{''.join(lines)}")


def stop_with_ctrl_c(proc: subprocess.Popen[str], lines: list[str]) -> str:
    """SIGINT, as Ctrl+C sends it; the whole output once the process has exited."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    return "".join([*lines, out])


def test_shop_demo_serves_http_and_grpc_then_stops_cleanly_on_ctrl_c() -> None:
    http_port, grpc_port, gateway_port = free_ports(3)
    proc, lines = start_example(
        "shop/main.py",
        "shop ready",
        SHOP_HTTP_PORT=str(http_port),
        SHOP_GRPC_PORT=str(grpc_port),
        SHOP_GATEWAY_PORT=str(gateway_port),
    )
    try:
        created = httpx.post(f"http://127.0.0.1:{http_port}/orders", json={"item": "book"})
        assert created.status_code == 201
        # The gateway: JSON in, the gRPC method called, JSON out (camelCase, as grpc-gateway).
        through = httpx.post(
            f"http://127.0.0.1:{gateway_port}/v1/orders", json={"item": "pen", "quantity": 2}
        )
        assert through.status_code == 200, through.text
        assert through.json()["item"] == "pen"
        sys.path.insert(0, str(ROOT / "examples/shop"))
        import shop_pb2
        import shop_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = shop_pb2_grpc.ShopStub(channel).PlaceOrder(
                shop_pb2.OrderRequest(item="pen", quantity=2), timeout=5
            )
        assert reply.item == "pen"
        assert reply.status == "accepted"
        output = stop_with_ctrl_c(proc, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sys.path[:] = [p for p in sys.path if p != str(ROOT / "examples/shop")]
    assert proc.returncode == 0, output
    assert "receipt sent for order o-1 (book x1)" in output
    assert "receipt sent for order o-2 (pen x2)" in output
    assert "exit 0 (clean)" in output


def test_orders_example_keeps_its_receipt_promise_on_ctrl_c() -> None:
    orders_port, admin_port = free_ports(2)
    proc, lines = start_example(
        "orders.py", "press Ctrl+C", ORDERS_PORT=str(orders_port), ADMIN_PORT=str(admin_port)
    )
    try:
        with socket.create_connection(("127.0.0.1", orders_port), timeout=5) as conn:
            conn.sendall(b"ORDER book\n")
            assert conn.makefile().readline() == "OK 1\n"
        # The receipt takes 2 s; Ctrl+C right away must not drop it.
        output = stop_with_ctrl_c(proc, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    order = [
        "flushing the write-behind cache",  # before_stop
        "receipt sent for order 1 (book)",  # the tracked task
        "all orders accounted for",  # after_stop
        "inventory closed",  # the resource, last
        "exit 0 (clean)",  # the report
    ]
    positions = [output.find(line) for line in order]
    assert -1 not in positions, output
    assert positions == sorted(positions), output
