"""Liveness, readiness and metrics.

``/healthz`` answers while the process serves requests. ``/readyz`` answers 200 only when the
database and Redis both answer (503 naming the one that does not); both need no key.
``/metrics`` is the Prometheus text format and shows every caller's order counts, so it needs
an operator key (``Authorization: Bearer <operator key>``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from worker.api.auth import CallerRef, current_operator
from worker.api.deps import MetricsDep
from worker.api.errors import json_response
from worker.db import get_engine
from worker.redis_client import redis_client

router = APIRouter(tags=["health"])

REDIS_CLIENT_NAME = "orders-readyz"
READY_EXAMPLE = {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


@router.get(
    "/healthz", responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}}
)
async def healthz() -> Response:
    """The process is up."""
    return json_response({"status": "ok"})


class Readiness:
    """Checks the database and Redis, at most once per ``cache_s``, over pooled connections.

    A probe storm (several load balancers, each every second) then costs one ``SELECT 1`` and
    one ``PING`` per ``cache_s``, on connections that stay open between checks.
    """

    def __init__(self, db_url: str, redis_url: Callable[[], str], *, cache_s: float = 1.0) -> None:
        self.db_url = db_url
        self.redis_url = redis_url
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._checks: dict[str, str] = {}
        self._checked_at = float("-inf")

    def checks(self) -> dict[str, str]:
        """``{"database": "ok" | "error: ...", "redis": ...}`` (blocking; never raises)."""
        with self._lock:
            if time.monotonic() - self._checked_at >= self.cache_s:
                self._checks = {"database": self._database(), "redis": self._ping()}
                self._checked_at = time.monotonic()
            return dict(self._checks)

    def _database(self) -> str:
        try:
            with get_engine(self.db_url).connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # readiness reports any failure, it never raises
            return f"error: {type(exc).__name__}"
        return "ok"

    def _ping(self) -> str:
        try:
            if self._redis is None:
                self._redis = redis_client(
                    self.redis_url(), profile="check", name=REDIS_CLIENT_NAME
                )
            self._redis.ping()
        except Exception as exc:
            return f"error: {type(exc).__name__}"
        return "ok"

    def close(self) -> None:
        """Release the Redis connection."""
        with self._lock:
            if self._redis is not None:
                self._redis.close()
                self._redis = None


@router.get(
    "/readyz",
    responses={
        200: {"content": {"application/json": {"example": READY_EXAMPLE}}},
        503: {"description": "The database or Redis is unreachable"},
    },
)
async def readyz(request: Request) -> Response:
    """200 when the database and Redis answer (checked at most once a second); 503 otherwise."""
    readiness: Readiness = request.app.state.readiness
    checks = await run_in_threadpool(readiness.checks)
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        401: {"description": "No valid operator key"},
        403: {"description": "A caller key: metrics need an operator key"},
    },
)
async def metrics(
    registry: MetricsDep, _operator: Annotated[CallerRef, Depends(current_operator)]
) -> Response:
    """Request counts and latency by route, orders accepted, orders by status (all callers).

    Needs an operator key as ``Authorization: Bearer <key>``.
    """
    body = await run_in_threadpool(registry.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
