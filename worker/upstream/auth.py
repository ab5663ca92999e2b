"""The bearer-token hook: adds the shared token, and on a 401 refreshes it and retries once."""

from __future__ import annotations

from collections.abc import Generator

import httpx

from worker.upstream.token import TokenCache


class SharedTokenAuth(httpx.Auth):
    """httpx auth flow over a ``TokenCache``; the single 401 retry is the only retry here."""

    def __init__(self, cache: TokenCache) -> None:
        self._cache = cache

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._cache.get()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            self._cache.invalidate(token)
            request.headers["Authorization"] = f"Bearer {self._cache.get()}"
            yield request
