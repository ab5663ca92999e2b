"""Request headers are bounded in size and in time (a real ``orders api`` process, raw
sockets): an 8 MB header is refused, four clients sending 50 MB of unfinished header leave
the process's memory flat, and a client trickling its headers is cut off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api_stub.testing import free_port
from tests.api.test_client_disconnect import REPO, _wait_ready

HEADER_TIMEOUT_S = 1.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def api_process(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A real ``orders api`` with a 1 s header deadline: (port, pid)."""
    port = free_port()
    child_env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(REPO),
        "ORDERS_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    }
    with (tmp_path / "api.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", str(port)],
            env=child_env,
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)


def _send_header(port: int, size: int, *, chunk: int = 1 << 20) -> bytes:
    """Send a request whose one header is ``size`` bytes (never finished); what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
        sent = 0
        try:
            while sent < size:
                sock.sendall(b"a" * min(chunk, size - sent))
                sent += chunk
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what we want
        try:
            return sock.recv(65536)
        except OSError:
            return b""


def test_an_8_mb_header_is_refused(api_process: tuple[int, int]) -> None:
    """8 MB of header on /healthz (no key needed) is not served; normal headers still are."""
    port, _ = api_process
    answer = _send_header(port, 8 << 20)
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:80]
    ok = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Pad": "a" * 4000}, timeout=5)
    assert ok.status_code == 200


def test_slow_50_mb_header_senders_leave_memory_flat(api_process: tuple[int, int]) -> None:
    """Four connections each sending 50 MB of unfinished header raise the API's RSS by less
    than 20 MB (before: +196 MB)."""
    port, pid = api_process
    before = _rss_mb(pid)
    peak = before
    threads = [
        threading.Thread(target=_send_header, args=(port, 50 << 20), kwargs={"chunk": 256 << 10})
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, _rss_mb(pid))
        time.sleep(0.02)
    assert peak - before < 20, (before, peak)


def test_headers_trickled_slowly_are_cut_off(api_process: tuple[int, int]) -> None:
    """A client sending a header byte every 0.2 s is disconnected about the deadline after
    its first byte, not served and not kept."""
    port, _ = api_process
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        start = time.monotonic()
        closed_after = None
        while time.monotonic() - start < 10 * HEADER_TIMEOUT_S:
            try:
                sock.sendall(b"a")
            except OSError:
                closed_after = time.monotonic() - start
                break
            time.sleep(0.2)
        assert closed_after is not None and closed_after < 4 * HEADER_TIMEOUT_S, closed_after
