"""Actions on a caller's orders: cancel, retry one, retry all matching a filter.

Retries are scheduled by :mod:`worker.intake.actions` (a history row each); those due now are
enqueued after commit. Both retry calls answer ``{"scheduled": n}``. ``OrderNotFound`` and
``WrongState`` become 404 and 409 in :mod:`worker.api.errors`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from schemas.intake import OrderView, RetryOneRequest, RetryRequest, RetryResponse
from worker.api.deps import BrokerDep, Caller, SettingsDep, as_utc, check_id
from worker.api.errors import json_response
from worker.api.openapi import errors
from worker.intake import actions
from worker.states import Status

router = APIRouter(prefix="/v1", tags=["orders"])


def _actor(caller_id: str) -> str:
    return f"caller:{caller_id}"


@router.post("/orders/{order_id}/cancel", response_model=OrderView, responses=errors(401, 404, 409))
async def cancel(
    order_id: str, caller: Caller, settings: SettingsDep, broker: BrokerDep
) -> Response:
    """Cancel an order that has not been submitted yet (409 otherwise)."""
    view = await run_in_threadpool(
        lambda: actions.cancel_order(
            settings.database_url,
            caller.id,
            check_id(order_id),
            actor=_actor(caller.id),
            dispatch=broker.dispatch,
        )
    )
    return json_response(view)


@router.post(
    "/orders/{order_id}/retry", response_model=RetryResponse, responses=errors(401, 404, 409, 422)
)
async def retry_one(
    order_id: str,
    caller: Caller,
    settings: SettingsDep,
    broker: BrokerDep,
    request: Annotated[RetryOneRequest | None, Body()] = None,
) -> Response:
    """Schedule a retry of a ``failed`` or held ``submit_unknown`` order, now or ``at`` a time."""
    at = as_utc(request.at if request else None, "at")
    n = await run_in_threadpool(
        lambda: actions.retry_order(
            settings.database_url,
            caller.id,
            check_id(order_id),
            at=at,
            grace_s=settings.enqueue_grace_s,
            actor=_actor(caller.id),
            dispatch=broker.dispatch,
        )
    )
    return json_response({"scheduled": n})


@router.post("/retries", response_model=RetryResponse, responses=errors(401, 422))
async def retry_matching(
    caller: Caller,
    settings: SettingsDep,
    broker: BrokerDep,
    request: Annotated[RetryRequest | None, Body()] = None,
) -> Response:
    """Schedule a retry of every order of the caller matching the filter (default: failed)."""
    request = request or RetryRequest()
    flt = actions.RetryFilter(
        Status(request.status), request.reason, request.batch_id, request.external_id
    )
    at = as_utc(request.at, "at")
    n = await run_in_threadpool(
        lambda: actions.retry_matching(
            settings.database_url,
            caller.id,
            flt,
            at=at,
            grace_s=settings.enqueue_grace_s,
            actor=_actor(caller.id),
            dispatch=broker.dispatch,
        )
    )
    return json_response({"scheduled": n})
