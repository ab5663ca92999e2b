"""FastAPI dependencies: settings, a database session, the authenticated caller, raw bodies.

Every ``/v1`` route depends on :func:`current_caller`: ``Authorization: Bearer <key>`` with a
known key, else 401 ``{"message": ...}`` (missing, malformed or unknown keys alike).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from worker.api.auth import CallerRef, current_caller
from worker.api.broker import Broker
from worker.api.errors import ApiError
from worker.api.metrics import Metrics
from worker.db import read_engine, read_session
from worker.intake.idempotency import MAX_IDEMPOTENCY_KEY_CHARS, normalise_key
from worker.settings import Settings

T = TypeVar("T")
ID_PATTERN = re.compile(r"^[a-z]{2,5}_[0-9a-f]{32}$")


# ``app.state`` is untyped: each object is typed here, where it leaves it.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_session(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    """A read session for ``def`` routes (writes use ``worker.db.transaction``: commit, then
    enqueue)."""
    with read_session(settings.database_url) as session:
        yield session


async def in_session(settings: Settings, fn: Callable[..., T], *args: Any) -> T:
    """``fn(session, *args)`` in a worker thread with a read session: one thread hop for the
    whole read, which keeps hot ``async`` routes cheap."""

    def call() -> T:
        session = read_session(settings.database_url)
        try:
            return fn(session, *args)
        finally:
            bind = session.bind
            session.close()
            if isinstance(bind, Connection):
                bind.close()

    return await run_in_threadpool(call)


async def in_connection(settings: Settings, fn: Callable[..., T], *args: Any) -> T:
    """``fn(connection, *args)`` in a worker thread on a read-only Core connection (no
    session, no ORM): for the hottest reads."""

    def call() -> T:
        with read_engine(settings.database_url).connect() as conn:
            return fn(conn, *args)

    return await run_in_threadpool(call)


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Optional; the same key with the same body returns the original result",
            # Documented only: checked below, to answer 400 naming the header.
            json_schema_extra={"pattern": f"^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}$"},
        ),
    ] = None,
) -> str | None:
    """The normalised ``Idempotency-Key`` header, or None; 400 if it is malformed."""
    if key is None:
        return None
    normalised = normalise_key(key)
    if normalised is None:
        n = MAX_IDEMPOTENCY_KEY_CHARS
        message = f"Idempotency-Key must be 1 to {n} printable characters"
        raise ApiError(400, message, [{"field": "Idempotency-Key", "message": message}])
    return normalised


def check_id(value: str) -> str:
    """``value`` if it looks like one of our ids; 404 otherwise (no query for garbage)."""
    if not ID_PATTERN.match(value):
        raise ApiError(404, f"{value[:60]!r} not found")
    return value


def as_utc(value: datetime | None, name: str) -> datetime | None:
    """An aware UTC datetime (naive values are taken as UTC); 422 naming ``name`` if out of
    range."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ApiError(
            422, f"{name}: out of range", [{"field": name, "message": str(exc)}]
        ) from None


async def read_body(request: Request) -> bytes:
    """The raw body (size limits are enforced by ``RequestGuard`` while it streams in)."""
    return await request.body()


Caller = Annotated[CallerRef, Depends(current_caller)]
DbSession = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
IdempotencyKeyDep = Annotated[str | None, Depends(idempotency_key)]
