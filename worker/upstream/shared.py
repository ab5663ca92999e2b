"""The upstream client every process builds the same way: one token shared through Redis."""

from __future__ import annotations

import ssl

import redis

from worker.flow.gate import Gate
from worker.ids import sha256_hex
from worker.settings import Settings
from worker.upstream.client import UpstreamClient, fetch_token, token_lock_timeout_s
from worker.upstream.token import TokenCache


def token_key(settings: Settings) -> str:
    """The Redis key of the shared token for this upstream and client id."""
    digest = sha256_hex(f"{settings.upstream_url}|{settings.upstream_client_id}")[:16]
    return f"orders:upstream-token:{digest}"


def shared_upstream(
    settings: Settings,
    client: redis.Redis,
    ssl_context: ssl.SSLContext | None = None,
    *,
    gate: Gate | None = None,
) -> tuple[TokenCache, UpstreamClient]:
    """The token cache (in ``client``'s Redis) and an upstream client that uses it (its API
    calls under ``gate``'s fleet-wide budget, when given)."""
    # One SSL context per process: each new client would otherwise load certificates (~65 ms).
    context = ssl_context or ssl.create_default_context()
    token_http = UpstreamClient(settings, None, context)

    def fetch() -> tuple[str, float]:
        with token_http.new_http_client() as http:
            return fetch_token(settings, http)

    tokens = TokenCache(
        client,
        token_key(settings),
        fetch,
        margin_s=settings.token_refresh_margin_s,
        lock_timeout_s=token_lock_timeout_s(settings),
    )
    return tokens, UpstreamClient(settings, tokens, context, gate=gate)
