"""How an upstream request travels: one keep-alive HTTP/1.1 connection per thread.

The upstream client speaks to the wire through one method, ``send``, and gets a ``Reply``
(status, headers, body, time to the answer). Two wires:

* ``StdlibWire`` (the default): the standard library's ``http.client`` on a connection that
  the calling thread keeps between calls. A call costs about a third of the CPU of an
  ``httpx.Client`` call (bench/RESULTS.md, "Fifth pass": 0.17 against 0.58 ms), and the worker
  makes two per order.
* ``HttpxWire``: an ``httpx.Client`` per thread, for what http.client does not do: proxies
  from the environment (``HTTPS_PROXY``; chosen by itself when one applies to the upstream)
  and injected transports (tests).

Both raise the same ``httpx`` exception types for transport failures, so one function
(``classify.error_for_exception``) decides what each means: a failure before the request
left (``ConnectError``, ``ConnectTimeout``) is safe to retry; any later one may have reached
the upstream (ambiguous for a submit).
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx

# Below uvicorn's 5 s keep-alive, so we never reuse a connection the server is closing.
KEEPALIVE_EXPIRY_S = 3.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds per phase of a call: connecting, writing the request, waiting for the answer."""

    connect: float
    write: float
    read: float


@dataclass(frozen=True, slots=True)
class Reply:
    """An upstream answer: status, headers (``get`` by lower-case name), body, and the time
    from sending the request to its last byte."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    elapsed_s: float

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class Wire(Protocol):
    """Sends one request to the upstream and returns its answer; thread-safe."""

    def send(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> Reply:
        """``path`` is below the upstream's base URL and carries any query string.

        Raises:
            httpx.TransportError: the request failed on the way (its subclass says when).
        """
        ...

    def close(self) -> None: ...


def proxied(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy (``HTTPS_PROXY``, ``NO_PROXY``)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if parts.scheme not in proxies and "all" not in proxies:
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class _Conn:
    """One thread's connection and when it was last used."""

    __slots__ = ("conn", "idle_since")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.idle_since = time.monotonic()


class StdlibWire:
    """``http.client`` with one keep-alive connection per calling thread."""

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext | None,
        *,
        keepalive_s: float = KEEPALIVE_EXPIRY_S,
    ) -> None:
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._host_header = parts.netloc.rsplit("@", 1)[-1]
        self._timeouts = timeouts
        self._ssl = ssl_context
        self._keepalive_s = keepalive_s
        self._local = threading.local()
        self._all: list[_Conn] = []
        self._lock = threading.Lock()

    def send(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> Reply:
        held = self._connection()
        conn = held.conn
        started = time.perf_counter()
        try:
            conn.putrequest(method, self._prefix + path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", self._host_header)
            for name, value in headers.items():
                conn.putheader(name, value)
            if body is not None or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body)
        except TimeoutError as exc:
            self._drop(held)
            raise httpx.WriteTimeout(str(exc) or "timed out writing the request") from exc
        except OSError as exc:
            self._drop(held)
            raise httpx.WriteError(f"{type(exc).__name__}: {exc}") from exc
        try:
            assert conn.sock is not None
            conn.sock.settimeout(self._timeouts.read)
            response = conn.getresponse()
            content = response.read()
        except TimeoutError as exc:
            self._drop(held)
            raise httpx.ReadTimeout(str(exc) or "timed out waiting for the answer") from exc
        except (http.client.HTTPException, ValueError) as exc:
            # A dropped connection (RemoteDisconnected), a cut body, a line that is no HTTP.
            self._drop(held)
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            self._drop(held)
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc
        elapsed_s = time.perf_counter() - started
        if response.will_close:
            self._drop(held)
        else:
            conn.sock.settimeout(self._timeouts.write)
            held.idle_since = time.monotonic()
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, reply_headers, content, elapsed_s)

    def _connection(self) -> _Conn:
        """This thread's connection: the kept one if the server has not closed it and it has
        not sat idle past the keep-alive, else a new one (connect errors are ``NOT_SENT``)."""
        held: _Conn | None = getattr(self._local, "conn", None)
        if held is not None and held.conn.sock is not None:
            idle = time.monotonic() - held.idle_since
            if idle < self._keepalive_s and not _readable(held.conn.sock):
                return held
        if held is not None:
            self._drop(held)
        conn = self._new()
        held = _Conn(conn)
        self._local.conn = held
        with self._lock:
            self._all.append(held)
        return held

    def _new(self) -> http.client.HTTPConnection:
        t = self._timeouts
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=t.connect, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=t.connect)
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from exc
        except OSError as exc:  # refused, unreachable, unknown host, TLS handshake refused
            conn.close()
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(t.write)
        return conn

    def _drop(self, held: _Conn) -> None:
        held.conn.close()
        if getattr(self._local, "conn", None) is held:
            self._local.conn = None
        with self._lock:
            if held in self._all:
                self._all.remove(held)

    def close(self) -> None:
        with self._lock:
            kept, self._all = self._all, []
        for held in kept:
            held.conn.close()


def _readable(sock: socket.socket) -> bool:
    """An idle keep-alive socket with something to read has been closed by the server (or
    carries bytes nobody asked for): either way it is not reused."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def small_client(
    timeout: httpx.Timeout,
    ssl_context: ssl.SSLContext | None,
    transport: httpx.BaseTransport | None = None,
    *,
    keepalive_s: float = KEEPALIVE_EXPIRY_S,
) -> httpx.Client:
    """An httpx client for one thread's calls (one at a time: a few connections suffice)."""
    return httpx.Client(
        verify=ssl_context or True,
        timeout=timeout,
        transport=transport,
        limits=httpx.Limits(
            max_connections=4, max_keepalive_connections=2, keepalive_expiry=keepalive_s
        ),
    )


class HttpxWire:
    """An ``httpx.Client`` per thread: proxies from the environment, injected transports."""

    def __init__(
        self,
        base_url: str,
        timeout: httpx.Timeout,
        ssl_context: ssl.SSLContext | None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base = base_url
        self._timeout = timeout
        self._ssl = ssl_context
        self._transport = transport
        self._local = threading.local()
        self._all: list[httpx.Client] = []
        self._lock = threading.Lock()

    def send(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> Reply:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = small_client(self._timeout, self._ssl, self._transport)
            self._local.client = client
            with self._lock:
                self._all.append(client)
        started = time.perf_counter()
        response = client.request(method, self._base + path, content=body, headers=dict(headers))
        elapsed_s = time.perf_counter() - started
        return Reply(response.status_code, response.headers, response.content, elapsed_s)

    def close(self) -> None:
        with self._lock:
            kept, self._all = self._all, []
        for client in kept:
            client.close()
