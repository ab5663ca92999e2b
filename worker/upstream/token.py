"""One upstream access token shared by every worker process, through Redis.

The token lives under one key with its expiry. A caller refreshes it when less than the margin
remains, holding a Redis lock (``redis.Redis.lock``) so that one process fetches while the
others keep using the still-valid token or wait for the lock. A 401 deletes exactly the token
that was refused.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from worker.errors import RetryableError

# Delete the token only if it is still the one we were refused with (a newer one stays).
_DELETE_IF_EQUALS = """
local raw = redis.call('GET', KEYS[1])
if raw and string.find(raw, ARGV[1], 1, true) then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float
    lifetime_s: float

    def fresh(self, now: float, margin_s: float) -> bool:
        """Usable without refreshing: more than the margin (at most a quarter of life) left."""
        return self.expires_at - min(margin_s, self.lifetime_s / 4) > now

    def valid(self, now: float) -> bool:
        return self.expires_at - 0.5 > now


Fetcher = Callable[[], tuple[str, float]]
"""Fetch a new token from the upstream: returns ``(access_token, expires_in_s)``."""


class TokenCache:
    """The shared token: ``get()`` for a usable token, ``invalidate(t)`` after a 401."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        fetch: Fetcher,
        *,
        margin_s: float = 60.0,
        lock_timeout_s: float = 15.0,
    ) -> None:
        """``lock_timeout_s`` must exceed a worst-case ``fetch``, or two fetches may overlap."""
        self._redis = client
        self._key = key
        self._lock_key = key + ":lock"
        self._fetch = fetch
        self._margin_s = margin_s
        self._lock_timeout_s = lock_timeout_s
        self._local: Token | None = None
        self._mutex = threading.Lock()
        self._delete_if = client.register_script(_DELETE_IF_EQUALS)
        self.fetches = 0

    def get(self) -> str:
        """A token with time left, refreshing it (once, cluster-wide) when it is due."""
        now = time.time()
        local = self._local
        if local is not None and local.fresh(now, self._margin_s):
            return local.value
        with self._mutex:
            return self._get_locked()

    def _get_locked(self) -> str:
        now = time.time()
        shared = self._read()
        if shared is not None and shared.fresh(now, self._margin_s):
            self._local = shared
            return shared.value
        lock = self._redis.lock(self._lock_key, timeout=self._lock_timeout_s, sleep=0.05)
        if not lock.acquire(blocking=False):
            # Another process is refreshing: a token that is still valid will do meanwhile.
            if shared is not None and shared.valid(now):
                return shared.value
            if not lock.acquire(blocking=True, blocking_timeout=self._lock_timeout_s):
                raise RetryableError(
                    "token_unavailable", "no upstream token became available in time"
                )
        try:
            # Whoever held the lock before us has usually stored a fresh token by now.
            shared = self._read()
            if shared is not None and shared.fresh(time.time(), self._margin_s):
                self._local = shared
                return shared.value
            return self._refresh()
        finally:
            # It may have expired during a very slow fetch; another process may hold it now.
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def _refresh(self) -> str:
        value, expires_in_s = self._fetch()
        self.fetches += 1
        now = time.time()
        token = Token(value, now + expires_in_s, expires_in_s)
        raw = json.dumps({"value": value, "expires_at": token.expires_at, "life": expires_in_s})
        self._redis.set(self._key, raw, px=max(1, int(expires_in_s * 1000)))
        self._local = token
        return value

    def invalidate(self, value: str) -> None:
        """Forget ``value`` here and in Redis, unless another token has replaced it already."""
        with self._mutex:
            if self._local is not None and self._local.value == value:
                self._local = None
            self._delete_if(keys=[self._key], args=[json.dumps(value)])

    def _read(self) -> Token | None:
        raw = self._redis.get(self._key)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return Token(str(data["value"]), float(data["expires_at"]), float(data["life"]))
        except (ValueError, KeyError, TypeError):
            return None
