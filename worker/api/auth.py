"""Key authentication: ``Authorization: Bearer <key>``, else 401 ``{"message": ...}``.

Two roles, never interchangeable: a *caller* key is the only key the ``/v1`` API accepts
(:func:`current_caller`); an *operator* key is the only key operator endpoints accept
(:func:`current_operator`, e.g. ``/metrics``; the console later). Missing, malformed, unknown,
revoked and wrong-role keys answer 401 (a caller key on an operator endpoint: 403).

A key that authenticated is remembered for ``CACHE_S`` seconds per process (by its hash), so a
hot key costs one indexed query per ``CACHE_S`` per process; that is also the bound on how long
a revoked or rotated key keeps working anywhere. Unknown keys are never cached. The key's
``last_used_at`` is written at most once per ``TOUCH_INTERVAL_S`` per key, off the request path.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import structlog
from cachetools import TTLCache
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from worker.api.errors import ApiError
from worker.db import read_session, transaction
from worker.ids import utcnow
from worker.intake.callers import ROLE_CALLER, ROLE_OPERATOR, authenticate, hash_key, touch

log = structlog.get_logger(__name__)

CACHE_S = 2.0
"""How long a good key is trusted without a query: the revocation delay on every process."""
CACHE_MAX = 10_000
TOUCH_INTERVAL_S = 60.0
bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer ok_...` (API key)")


@dataclass(frozen=True, slots=True)
class CallerRef:
    """The authenticated key's owner: a caller, or an operator (``role``)."""

    id: str
    name: str
    role: str = ROLE_CALLER


class Authenticator:
    """Looks keys up in the database, with a short per-process cache of the good ones."""

    def __init__(
        self,
        db_url: str,
        *,
        cache_s: float = CACHE_S,
        touch_interval_s: float = TOUCH_INTERVAL_S,
    ) -> None:
        self.db_url = db_url
        self.touch_interval_s = touch_interval_s
        self._cache: TTLCache[str, CallerRef] = TTLCache(CACHE_MAX, ttl=cache_s)
        self._touched: TTLCache[str, bool] = TTLCache(CACHE_MAX, ttl=touch_interval_s)
        self._lock = threading.Lock()
        # One thread: last-used writes are rare, and must never hold up a request.
        self._toucher = ThreadPoolExecutor(1, thread_name_prefix="key-touch")

    def cached(self, key: str) -> CallerRef | None:
        """The owner of ``key`` if it authenticated less than ``cache_s`` ago."""
        with self._lock:
            return self._cache.get(hash_key(key))

    def lookup(self, key: str) -> CallerRef | None:
        """The owner of ``key`` from the database (blocking), remembered if found."""
        with read_session(self.db_url) as session:
            caller = authenticate(session, key)
            if caller is None:
                return None
            ref = CallerRef(caller.id, caller.name, caller.role)
        with self._lock:
            self._cache[hash_key(key)] = ref
            due = ref.id not in self._touched
            if due:
                self._touched[ref.id] = True
        if due:
            self._toucher.submit(self._touch, ref.id)
        return ref

    def _touch(self, caller_id: str) -> None:
        try:
            with transaction(self.db_url) as session:
                touch(session, caller_id, now=utcnow(), min_interval_s=self.touch_interval_s)
        except SQLAlchemyError as exc:  # bookkeeping only: never worth failing a request
            log.warning("key_touch_failed", caller_id=caller_id, error=type(exc).__name__)

    def close(self) -> None:
        """Stop the last-used writer (a pending write is bookkeeping: dropping it is fine)."""
        self._toucher.shutdown(wait=False, cancel_futures=True)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


async def _key_owner(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> CallerRef:
    if credentials is None or not credentials.credentials.strip():
        raise unauthorized("missing or malformed Authorization header; expected 'Bearer <key>'")
    key = credentials.credentials.strip()
    authenticator: Authenticator = request.app.state.authenticator
    owner = authenticator.cached(key) or await run_in_threadpool(authenticator.lookup, key)
    if owner is None:
        raise unauthorized("invalid API key")
    return owner


async def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> CallerRef:
    """The caller whose API key is in the ``Authorization`` header, or 401.

    An operator key is not a caller: 401 here.
    """
    owner = await _key_owner(request, credentials)
    if owner.role != ROLE_CALLER:
        raise unauthorized("an operator key cannot call the /v1 API; use a caller key")
    return owner


async def current_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> CallerRef:
    """The operator whose key is in the ``Authorization`` header; 401 without a valid key,
    403 for a caller key."""
    owner = await _key_owner(request, credentials)
    if owner.role != ROLE_OPERATOR:
        raise ApiError(403, "an operator key is required (orders keys create NAME --operator)")
    return owner
