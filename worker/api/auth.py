"""Caller authentication: ``Authorization: Bearer <key>``, else 401 ``{"message": ...}``.

Missing, malformed and unknown keys all answer 401. A key that authenticated is remembered
for ``CACHE_S`` seconds per process (by its hash), so hot callers cost no query per request;
unknown keys are never cached.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from worker.api.errors import ApiError
from worker.db import session_factory
from worker.intake.callers import authenticate, hash_key

CACHE_S = 30.0
CACHE_MAX = 10_000
bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer ok_...` (API key)")


@dataclass(frozen=True, slots=True)
class CallerRef:
    """The authenticated caller."""

    id: str
    name: str


class Authenticator:
    """Looks keys up in the database, with a short per-process cache of the good ones."""

    def __init__(self, db_url: str, cache_s: float = CACHE_S) -> None:
        self.db_url = db_url
        self.cache_s = cache_s
        self._cache: dict[str, tuple[CallerRef, float]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> CallerRef | None:
        """The caller of ``key`` if it authenticated less than ``cache_s`` ago."""
        entry = self._cache.get(hash_key(key))
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def lookup(self, key: str) -> CallerRef | None:
        """The caller of ``key`` from the database (blocking), remembered if found."""
        with session_factory(self.db_url)() as session:
            caller = authenticate(session, key)
            if caller is None:
                return None
            ref = CallerRef(caller.id, caller.name)
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[hash_key(key)] = (ref, time.monotonic() + self.cache_s)
        return ref


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


async def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> CallerRef:
    """The caller whose API key is in the ``Authorization`` header, or 401."""
    if credentials is None or not credentials.credentials.strip():
        raise unauthorized("missing or malformed Authorization header; expected 'Bearer <key>'")
    key = credentials.credentials.strip()
    authenticator: Authenticator = request.app.state.authenticator
    caller = authenticator.cached(key) or await run_in_threadpool(authenticator.lookup, key)
    if caller is None:
        raise unauthorized("invalid API key")
    return caller
