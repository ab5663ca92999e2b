"""Limits on what a client may cost before its request is even read: header size and time.

uvicorn with httptools buffers request headers without a bound, and neither of its HTTP
implementations bounds the time a client may take to send them (its keep-alive timer stops
at the first byte). The API therefore runs uvicorn's h11 implementation with
``h11_max_incomplete_event_size`` (``ORDERS_HTTP_MAX_HEADER_BYTES``: a request line plus
headers beyond it answers 400 and the connection closes, so the count of headers is bounded
by their size too), and this protocol closes a connection whose request headers are not
complete ``ORDERS_HTTP_HEADER_TIMEOUT_S`` after its first byte (or after connecting).
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from uvicorn.protocols.http.h11_impl import H11Protocol

from worker.settings import get_settings


@lru_cache(maxsize=1)
def header_timeout_s() -> float:
    """The process's header deadline (settings read once)."""
    return get_settings().http_header_timeout_s


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request's headers."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._header_timer is None and (before is None or before.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not before:  # its headers are in: the request is being handled
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(header_timeout_s(), self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
