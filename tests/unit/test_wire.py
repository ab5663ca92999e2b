"""The stdlib wire against real sockets: keep-alive, the server's closes, HTTP framings, and
which failures may have reached the upstream (classify decides on the exception type)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from worker.errors import AmbiguousError, RetryableError
from worker.settings import Settings
from worker.upstream.classify import error_for_exception
from worker.upstream.client import UpstreamClient, make_wire
from worker.upstream.wire import HttpxWire, StdlibWire, Timeouts

FAST = Timeouts(connect=1.0, write=1.0, read=0.5)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

Answer = Callable[[socket.socket, bytes], bool]
"""Given a connection and one request (head and body), answer it; False closes the connection."""


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


class Server:
    """A scripted HTTP server on 127.0.0.1: counts connections, records requests."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    request = _read_request(conn)
                except OSError:
                    return
                if request is None:
                    return
                self.requests.append(request)
                if not self.answer(conn, request):
                    return

    def close(self) -> None:
        self.sock.close()
        for conn in self._open:
            conn.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], Server]]:
    servers: list[Server] = []

    def start(answer: Answer) -> Server:
        servers.append(Server(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def wire_to() -> Iterator[Callable[..., StdlibWire]]:
    wires: list[StdlibWire] = []

    def make(url: str, **kw: float) -> StdlibWire:
        wires.append(StdlibWire(url, FAST, None, **kw))
        return wires[-1]

    yield make
    for wire in wires:
        wire.close()


def _ok(conn: socket.socket, _: bytes) -> bool:
    conn.sendall(OK)
    return True


def test_calls_of_one_thread_share_one_kept_alive_connection(serve, wire_to):
    server = serve(_ok)
    wire = wire_to(server.url + "/base/")
    for i in range(5):
        reply = wire.send("POST", f"/x?n={i}", {"content-type": "application/json"}, b'{"a":1}')
        assert (reply.status_code, reply.content, reply.is_success) == (200, b"{}", True)
        assert reply.headers["content-type"] == "application/json"
        assert reply.elapsed_s > 0
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /base/x?n=0 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}".encode() in first
    assert b"Content-Length: 7" in first and first.endswith(b'{"a":1}')


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed(serve, wire_to):
    def once(conn: socket.socket, _: bytes) -> bool:
        conn.sendall(OK)
        return False  # the server closes after each answer, without saying so

    server = serve(once)
    wire = wire_to(server.url)
    for _ in range(3):
        wire.send("GET", "/x", {}, None)
        time.sleep(0.05)  # the close reaches us before the next call
    assert server.connections == 3
    assert len(server.requests) == 3


def test_an_idle_connection_is_not_reused_past_the_keepalive(serve, wire_to):
    server = serve(_ok)
    wire = wire_to(server.url, keepalive_s=0.05)
    wire.send("GET", "/x", {}, None)
    time.sleep(0.1)
    wire.send("GET", "/x", {}, None)
    assert server.connections == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["chunked", "connection-close", "http-1.0"],
)
def test_every_http_1_framing_reads_the_whole_body(serve, wire_to, raw):
    def answer(conn: socket.socket, _: bytes) -> bool:
        conn.sendall(raw)
        return b"close" not in raw and b"HTTP/1.0" not in raw

    server = serve(answer)
    wire = wire_to(server.url)
    assert [wire.send("GET", "/x", {}, None).content for _ in range(2)] == [b"{}", b"{}"]


def test_a_refused_connection_was_never_sent_so_even_a_submit_retries(wire_to):
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    wire = wire_to(f"http://127.0.0.1:{port}")
    with pytest.raises(httpx.ConnectError) as caught:
        wire.send("POST", "/api/partner/order", {}, b"{}")
    error = error_for_exception(caught.value, idempotent=False)
    assert isinstance(error, RetryableError) and not isinstance(error, AmbiguousError)
    assert error.reason == "upstream_connect"


def _silent(conn: socket.socket, _: bytes) -> bool:
    time.sleep(2)
    return False


def _cut(conn: socket.socket, _: bytes) -> bool:
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id":')
    return False


def _hang_up(conn: socket.socket, _: bytes) -> bool:
    return False


def _junk(conn: socket.socket, _: bytes) -> bool:
    conn.sendall(b"this is not HTTP\r\n\r\n")
    return False


@pytest.mark.parametrize(
    ("answer", "kind", "reason"),
    [
        (_silent, httpx.ReadTimeout, "timeout"),
        (_cut, httpx.RemoteProtocolError, "disconnect"),
        (_hang_up, httpx.RemoteProtocolError, "disconnect"),
        (_junk, httpx.RemoteProtocolError, "disconnect"),
    ],
    ids=["no-answer", "body-cut", "hung-up", "not-http"],
)
def test_a_failure_after_the_request_left_is_ambiguous_for_a_submit(
    serve, wire_to, answer, kind, reason
):
    server = serve(answer)
    wire = wire_to(server.url)
    with pytest.raises(kind) as caught:
        wire.send("POST", "/api/partner/order", {}, b"{}")
    submit = error_for_exception(caught.value, idempotent=False)
    assert isinstance(submit, AmbiguousError) and submit.reason == f"submit_{reason}"
    preview = error_for_exception(caught.value, idempotent=True)
    assert isinstance(preview, RetryableError) and not isinstance(preview, AmbiguousError)
    # The broken connection is gone: the next call opens a new one.
    server.answer = _ok
    assert wire.send("GET", "/x", {}, None).status_code == 200
    assert server.connections == 2


def test_a_submit_the_upstream_never_answered_is_submit_unknown_through_the_client(serve, wire_to):
    server = serve(_silent)
    settings = Settings(upstream_url=server.url, upstream_read_timeout_s=0.3)
    client = UpstreamClient(settings, None, ssl.create_default_context())
    try:
        with pytest.raises(AmbiguousError) as caught:
            client.submit({"order": {}})
        assert caught.value.reason == "submit_timeout"
    finally:
        client.close()


def test_the_client_says_it_sends_and_accepts_json_and_who_calls(serve, wire_to):
    server = serve(_ok)
    settings = Settings(upstream_url=server.url)
    client = UpstreamClient(settings, None, ssl.create_default_context())
    try:
        client.preview({"order": {}})
    finally:
        client.close()
    head = server.requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /api/partner/order/preview http/1.1")
    for line in (b"accept: application/json", b"content-type: application/json"):
        assert line in head
    assert b"user-agent: partner-order-worker" in head


def test_a_proxy_in_the_environment_or_the_setting_takes_the_httpx_wire(monkeypatch):
    context = ssl.create_default_context()
    settings = Settings(upstream_url="https://upstream.example")
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(make_wire(settings, context), StdlibWire)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert isinstance(make_wire(settings, context), HttpxWire)
    monkeypatch.setenv("NO_PROXY", "upstream.example")
    assert isinstance(make_wire(settings, context), StdlibWire)
    monkeypatch.delenv("HTTPS_PROXY")
    chosen = Settings(upstream_url="https://upstream.example", upstream_http="httpx")
    assert isinstance(make_wire(chosen, context), HttpxWire)
