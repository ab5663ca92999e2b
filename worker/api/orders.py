"""Order intake and reads: ``POST /v1/orders``, ``/v1/orders/batch``, ``GET /v1/orders...``.

Intake answers 202 with the order view (or the batch results) once the orders are committed;
they are enqueued right after (:mod:`worker.api.submission`). A repeat (same
``Idempotency-Key`` or ``external_id`` with the same payload) answers 200 with the original,
and the header ``Idempotent-Replayed: true``. See :mod:`worker.intake.service` for the rules.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel

from schemas.intake import BatchResponse, EventPage, OrderPage, OrderStatus, OrderView, TextParam
from worker.api.deps import (
    BrokerDep,
    Caller,
    IdempotencyKeyDep,
    MetricsDep,
    SettingsDep,
    as_utc,
    check_id,
    in_connection,
    in_session,
)
from worker.api.errors import ApiError, json_response
from worker.api.listing import EVENT_ID, OrderFilter, decode_cursor, event_page, order_page
from worker.api.openapi import BATCH_BODY, ORDER_BODY, errors
from worker.api.order_reads import etag, not_modified, view_bytes
from worker.api.submission import Accept, submit
from worker.intake import service as intake_service

router = APIRouter(prefix="/v1/orders", tags=["orders"])

MAX_PAGE = 1000


def _intake_route(
    path: str,
    accept: Accept,
    *,
    name: str,
    model: type[BaseModel],
    body: dict[str, Any],
    summary: str,
    defer_enqueue: bool,
) -> None:
    """Register ``POST /v1/orders{path}``: 202 with the answer, 200 on a replay."""

    async def endpoint(
        request: Request,
        caller: Caller,
        key: IdempotencyKeyDep,
        settings: SettingsDep,
        broker: BrokerDep,
        metrics: MetricsDep,
    ) -> Response:
        return await submit(
            accept,
            request,
            caller_id=caller.id,
            key=key,
            settings=settings,
            broker=broker,
            metrics=metrics,
            defer_enqueue=defer_enqueue,
            slots_per_caller=settings.max_batches_in_flight_per_caller if defer_enqueue else None,
        )

    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        name=name,
        status_code=202,
        response_model=model,
        openapi_extra=body,
        responses={
            200: {"model": model, "description": "Replay of an earlier request"},
            **errors(400, 401, 409, 413, 422, *((429,) if defer_enqueue else ())),
        },
        summary=summary,
    )


_intake_route(
    "",
    intake_service.accept_order,
    name="create_order",
    model=OrderView,
    body=ORDER_BODY,
    summary="Accept one order (the upstream payload, unchanged)",
    defer_enqueue=False,
)
# A batch is enqueued after the answer is sent: ~200 messages stay out of the caller's latency.
_intake_route(
    "/batch",
    intake_service.accept_batch,
    name="create_batch",
    model=BatchResponse,
    body=BATCH_BODY,
    summary="Accept up to ORDERS_MAX_BATCH_ITEMS orders; one result per item, in order",
    defer_enqueue=True,
)


NO_STORE = "no-store"
ORDER_VIEW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The order view",
        "headers": {
            "ETag": {"description": "Strong tag of this answer", "schema": {"type": "string"}},
            "Cache-Control": {"description": "`no-store`", "schema": {"type": "string"}},
        },
    },
    304: {"description": "Unchanged since the ETag sent in `If-None-Match` (no body)"},
    **errors(401, 404),
}


@router.get("/{order_id}", response_model=OrderView, responses=ORDER_VIEW_RESPONSES)
async def get_order(
    order_id: str,
    caller: Caller,
    settings: SettingsDep,
    if_none_match: Annotated[
        str | None,
        Header(alias="If-None-Match", description="An ETag from an earlier answer"),
    ] = None,
) -> Response:
    """The order view; poll with ``If-None-Match: <ETag>`` to get ``304`` while unchanged."""
    body = await in_connection(settings, view_bytes, caller.id, check_id(order_id))
    if body is None:
        raise ApiError(404, f"order {order_id} not found")
    tag = etag(body)
    headers = {"ETag": tag, "Cache-Control": NO_STORE}
    if not_modified(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers, media_type="application/json")


@router.get("", response_model=OrderPage, responses=errors(401, 422))
async def list_orders(
    caller: Caller,
    settings: SettingsDep,
    status: Annotated[list[OrderStatus] | None, Query(description="Repeat for several")] = None,
    external_id: Annotated[TextParam | None, Query()] = None,
    batch_id: Annotated[TextParam | None, Query()] = None,
    created_since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    created_before: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> Response:
    """The caller's orders, newest first; follow ``next_cursor`` until it is null."""
    flt = OrderFilter(
        statuses=tuple(status or ()),
        external_id=external_id,
        batch_id=batch_id,
        created_since=as_utc(created_since, "created_since"),
        created_before=as_utc(created_before, "created_before"),
    )
    last_id = decode_cursor(cursor) if cursor is not None else None
    return json_response(await in_session(settings, order_page, caller.id, flt, limit, last_id))


@router.get("/{order_id}/events", response_model=EventPage, responses=errors(401, 404, 422))
async def order_events(
    order_id: str,
    caller: Caller,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> Response:
    """The order's status history, oldest first; follow ``next_cursor`` until it is null."""
    after = int(decode_cursor(cursor, EVENT_ID)) if cursor is not None else None
    page = await in_session(settings, event_page, caller.id, check_id(order_id), limit, after)
    if page is None:
        raise ApiError(404, f"order {order_id} not found")
    return json_response(page)
