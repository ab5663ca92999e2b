"""Webhook endpoints of a caller: register, list, delete, and see deliveries with attempts.

The signing secret (``whsec_`` + base64 of 24 random bytes, Standard Webhooks) is shown once,
in the answer to the POST. A URL that resolves to a private, loopback or link-local address
is refused (422 naming ``url``, without the address) unless ``ORDERS_WEBHOOK_ALLOW_PRIVATE``
is set; the name is resolved off the shared thread pool, within
``ORDERS_WEBHOOK_RESOLVE_TIMEOUT_S``, and a caller registers at most
``ORDERS_WEBHOOK_REGISTRATIONS_PER_MINUTE`` a minute (``worker.api.webhook_guard``). A caller
has at most ``ORDERS_WEBHOOK_MAX_ENDPOINTS_PER_CALLER`` endpoints (409 beyond: each status
change of its orders writes one delivery per endpoint). DELETE
disables the endpoint for good (its delivery log is kept, pending deliveries are cancelled);
it then no longer appears in the list.
"""

from __future__ import annotations

import base64
import secrets
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from schemas.webhooks import (
    WebhookDeliveryPage,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPage,
)
from worker.api.deps import Caller, DbSession, SettingsDep, check_id
from worker.api.errors import ApiError, json_response
from worker.api.listing import decode_cursor, encode_cursor
from worker.api.openapi import errors
from worker.api.webhook_guard import RegistrationGuard
from worker.db import transaction
from worker.ids import new_id, utcnow
from worker.models import Caller as CallerRow
from worker.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from worker.settings import Settings
from worker.views import iso
from worker.webhooks.targets import TargetRefused

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])

DELETED = "deleted by the caller"
SECRET_BYTES = 24


def new_secret() -> str:
    """A Standard Webhooks signing secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def endpoint_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as its caller sees it, without the secret."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "created_at": iso(endpoint.created_at),
    }


def _own(session: Session, caller_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, check_id(endpoint_id))
    if endpoint is None or endpoint.caller_id != caller_id or endpoint.disabled_reason == DELETED:
        raise ApiError(404, f"webhook endpoint {endpoint_id} not found")
    return endpoint


def _registered(session: Session, caller_id: str) -> int:
    """How many endpoints the caller has (deleted ones excepted), its row locked meanwhile."""
    # The lock serialises two registrations of one caller, so both cannot pass the cap.
    session.execute(select(CallerRow.id).where(CallerRow.id == caller_id).with_for_update())
    count = session.scalar(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(
            WebhookEndpoint.caller_id == caller_id,
            WebhookEndpoint.disabled_reason.is_distinct_from(DELETED),
        )
    )
    return int(count or 0)


@router.post(
    "",
    status_code=201,
    response_model=WebhookEndpointCreated,
    responses=errors(401, 409, 422, 429),
)
async def create_endpoint(
    body: WebhookEndpointCreate, caller: Caller, settings: SettingsDep, request: Request
) -> Response:
    """Register a URL for the caller's order events; the answer holds the signing secret."""
    guard = registration_guard(request)
    wait_s = guard.admit(caller.id)
    if wait_s is not None:
        message = (
            f"too many webhook registrations: at most {guard.per_minute} a minute "
            "(ORDERS_WEBHOOK_REGISTRATIONS_PER_MINUTE)"
        )
        raise ApiError(429, message, headers={"Retry-After": str(int(wait_s))})
    try:
        httpx.URL(body.url)
        await guard.check(body.url, allow_private=settings.webhook_allow_private)
    except (TargetRefused, httpx.InvalidURL) as exc:
        raise ApiError(422, f"url: {exc}", [{"field": "url", "message": str(exc)}]) from None
    return await run_in_threadpool(_register, body, caller.id, settings)


def registration_guard(request: Request) -> RegistrationGuard:
    """The app's registration guard, built on first use."""
    state = request.app.state
    if getattr(state, "webhook_guard", None) is None:
        settings = state.settings
        state.webhook_guard = RegistrationGuard(
            per_minute=settings.webhook_registrations_per_minute,
            resolve_timeout_s=settings.webhook_resolve_timeout_s,
        )
    guard: RegistrationGuard = state.webhook_guard
    return guard


def _register(body: WebhookEndpointCreate, caller_id: str, settings: Settings) -> Response:
    event_types = sorted(set(body.event_types)) if body.event_types else None
    endpoint = WebhookEndpoint(
        id=new_id("whe"),
        caller_id=caller_id,
        url=body.url,
        secret=new_secret(),
        event_types=event_types,
        enabled=True,
        disabled_reason=None,
        created_at=utcnow(),
    )
    cap = settings.webhook_max_endpoints_per_caller
    with transaction(settings.database_url) as session:
        if _registered(session, caller_id) >= cap:
            raise ApiError(
                409,
                f"too many webhook endpoints: at most {cap} per caller; delete one first",
            )
        session.add(endpoint)
    return json_response(
        {**endpoint_view(endpoint), "secret": endpoint.secret},
        201,
        {"Location": f"/v1/webhook-endpoints/{endpoint.id}"},
    )


@router.get("", response_model=WebhookEndpointPage, responses=errors(401))
def list_endpoints(caller: Caller, session: DbSession) -> Response:
    """The caller's endpoints (without secrets), oldest first."""
    rows = session.scalars(
        select(WebhookEndpoint)
        .where(
            WebhookEndpoint.caller_id == caller.id,
            WebhookEndpoint.disabled_reason.is_distinct_from(DELETED),
        )
        .order_by(WebhookEndpoint.id)
    )
    return json_response({"items": [endpoint_view(e) for e in rows], "next_cursor": None})


@router.delete("/{endpoint_id}", status_code=204, responses=errors(401, 404))
def delete_endpoint(endpoint_id: str, caller: Caller, settings: SettingsDep) -> Response:
    """Stop sending to this endpoint, for good."""
    with transaction(settings.database_url) as session:
        endpoint = _own(session, caller.id, endpoint_id)
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint.id)
            .values(enabled=False, disabled_reason=DELETED)
        )
    return Response(status_code=204)


@router.get(
    "/{endpoint_id}/deliveries", response_model=WebhookDeliveryPage, responses=errors(401, 404, 422)
)
def list_deliveries(
    endpoint_id: str,
    caller: Caller,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Deliveries to this endpoint, newest first, each with every attempt made."""
    endpoint = _own(session, caller.id, endpoint_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if cursor is not None:
        stmt = stmt.where(WebhookDelivery.id < decode_cursor(cursor))
    rows = list(session.scalars(stmt.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))
    more, rows = len(rows) > limit, rows[:limit]
    attempts: dict[str, list[dict[str, Any]]] = {d.id: [] for d in rows}
    if rows:
        for a in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.id)
        ):
            attempts[a.delivery_id].append(
                {
                    "at": iso(a.at),
                    "status_code": a.status_code,
                    "latency_ms": a.latency_ms,
                    "error": a.error,
                }
            )
    items = [
        {
            "id": d.id,
            "order_id": d.order_id,
            "event_type": d.event_type,
            "status": d.status,
            "next_attempt_at": iso(d.due_at) if d.status == "pending" else None,
            "last_status_code": d.last_status_code,
            "last_error": d.last_error,
            "created_at": iso(d.created_at),
            "updated_at": iso(d.updated_at),
            "payload": d.payload,
            "attempts": attempts[d.id],
        }
        for d in rows
    ]
    return json_response(
        {"items": items, "next_cursor": encode_cursor(rows[-1].id) if more and rows else None}
    )
