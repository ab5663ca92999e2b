"""A client that hangs up mid-body (a real ``orders api`` process, a raw socket): logged at
info and counted as 499, never an unhandled error or a 500."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api_stub.testing import free_port
from tests.api.conftest import make_caller

REPO = Path(__file__).resolve().parents[2]


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "orders api exited"
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("orders api did not start")


def _half_body_then_close(port: int, key: str) -> None:
    body = b'{"order_type": "new", "external_id": "half", "orderItems": ['
    head = (
        f"POST /v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) * 4}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        time.sleep(0.2)


def test_half_a_body_then_hang_up_is_a_499_not_a_500(env: dict[str, str], tmp_path: Path) -> None:
    caller = make_caller(env["ORDERS_DATABASE_URL"], "acme")
    operator = make_caller(env["ORDERS_DATABASE_URL"], "ops", role="operator")
    port = free_port()
    log_path = tmp_path / "api.log"
    child_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "ORDERS_LOG_LEVEL": "INFO"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", str(port)],
            env=child_env,
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(base_url, proc)
        for _ in range(3):
            _half_body_then_close(port, caller.key)
        time.sleep(0.5)
        metrics = httpx.get(f"{base_url}/metrics", headers=operator.headers, timeout=5).text
    finally:
        proc.terminate()
        proc.wait(15)
    output = log_path.read_text()
    assert "client_disconnected" in output
    assert "Traceback" not in output and "unhandled_error" not in output
    assert not re.search(r'orders_http_requests_total\{[^}]*status="500"', metrics)
    assert re.search(
        r'orders_http_requests_total\{method="POST",route="/v1/orders",status="499"\} 3\.0',
        metrics,
    )
