"""One webhook POST to an address checked beforehand, within one overall deadline.

httpx and httpcore resolve a URL's host when they connect, and their timeouts apply per
socket operation (a receiver trickling a byte every half second never trips a read timeout).
So an attempt uses an httpcore pool of one connection whose network backend

- connects to the :class:`~worker.webhooks.targets.Target` address that was checked, never
  resolving the name again; the URL keeps its host, so the ``Host`` header and the TLS server
  name (SNI, certificate check) are the URL's;
- bounds every connect, read, write and TLS handshake by what is left of the deadline.

Exceptions are httpcore's (``httpcore.TimeoutException``, ``ConnectError``, ...).
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from worker.webhooks.targets import Target


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline_at: float) -> None:
        self._inner = inner
        self._deadline_at = deadline_at

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, self._deadline_at, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, self._deadline_at, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, self._deadline_at, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, left), self._deadline_at
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """Connects to ``target.address`` whatever host httpcore asks for; bounded by a deadline."""

    def __init__(self, target: Target, *, deadline_at: float) -> None:
        self._target = target
        self._deadline_at = deadline_at
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, self._deadline_at, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(
            str(self._target.address),
            port,
            timeout=left,
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self._deadline_at)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _left(timeout: float | None, deadline_at: float, error: type[Exception]) -> float:
    left = deadline_at - time.monotonic()
    if left <= 0:
        raise error("the attempt's deadline has passed")
    return left if timeout is None else min(timeout, left)


def post(
    url: str,
    target: Target,
    *,
    body: bytes,
    headers: dict[str, str],
    deadline_s: float,
    ssl_context: ssl.SSLContext,
) -> tuple[int, str | None]:
    """POST ``body`` to ``url`` at ``target.address``; returns the status and ``Retry-After``.

    The answer's body is never read: the connection is closed once the headers are in.
    Credentials in the URL's userinfo become a Basic ``Authorization`` header, as httpx does.
    """
    parsed = httpx.URL(url)
    sent: dict[bytes | str, bytes | str] = dict(headers.items())
    if parsed.username or parsed.password:
        pair = f"{parsed.username}:{parsed.password}".encode()
        sent["authorization"] = "Basic " + base64.b64encode(pair).decode()
    core_url = httpcore.URL(
        scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
    )
    deadline_at = time.monotonic() + deadline_s
    phases = {"connect": deadline_s, "read": deadline_s, "write": deadline_s, "pool": deadline_s}
    with (
        httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            keepalive_expiry=0,
            network_backend=PinnedBackend(target, deadline_at=deadline_at),
        ) as pool,
        pool.stream(
            "POST", core_url, headers=sent, content=body, extensions={"timeout": phases}
        ) as response,
    ):
        retry_after = next(
            (v.decode("latin-1") for k, v in response.headers if k.lower() == b"retry-after"),
            None,
        )
        return response.status, retry_after
