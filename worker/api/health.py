"""Liveness, readiness and metrics; no API key needed.

``/healthz`` answers while the process serves requests. ``/readyz`` answers 200 only when the
database and Redis both answer (503 naming the one that does not). ``/metrics`` is the
Prometheus text format.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from worker.api.deps import BrokerDep, MetricsDep, SettingsDep
from worker.api.errors import json_response
from worker.db import get_engine

router = APIRouter(tags=["health"])

READY_EXAMPLE = {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


@router.get(
    "/healthz", responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}}
)
async def healthz() -> Response:
    """The process is up."""
    return json_response({"status": "ok"})


def _checks(db_url: str, ping: Any) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with get_engine(db_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports any failure, it never raises
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    return checks


@router.get(
    "/readyz",
    responses={
        200: {"content": {"application/json": {"example": READY_EXAMPLE}}},
        503: {"description": "The database or Redis is unreachable"},
    },
)
async def readyz(settings: SettingsDep, broker: BrokerDep) -> Response:
    """200 when the database and Redis answer; 503 otherwise."""
    checks = await run_in_threadpool(_checks, settings.database_url, broker.ping)
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}
    },
)
async def metrics(registry: MetricsDep) -> Response:
    """Request counts and latency by route, orders accepted, orders by status."""
    body = await run_in_threadpool(registry.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
