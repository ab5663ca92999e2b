"""Actions on a caller's orders: cancel, retry one, retry all matching a filter.

Each route maps its request to one action of :mod:`worker.actions` as ``caller:<id>`` (its
own orders only); the errors map in :mod:`worker.api.errors` (``OrderNotFound`` 404,
``WrongState`` 409, ``InvalidInput`` 422). Both retry calls answer ``{"scheduled": n}``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from schemas.intake import OrderView, RetryOneRequest, RetryRequest, RetryResponse
from worker.actions import actor as actors
from worker.actions import retry_filter as by_filter
from worker.actions.actor import Actor
from worker.actions.cancel import cancel_order
from worker.actions.retry_one import retry_order
from worker.api.broker import Broker
from worker.api.deps import BrokerDep, Caller, SettingsDep, check_id, in_session
from worker.api.errors import json_response
from worker.api.openapi import errors
from worker.settings import Settings
from worker.states import Status

router = APIRouter(prefix="/v1", tags=["orders"])


@router.post("/orders/{order_id}/cancel", response_model=OrderView, responses=errors(401, 404, 409))
async def cancel(
    order_id: str, caller: Caller, settings: SettingsDep, broker: BrokerDep
) -> Response:
    """Cancel an order that has not been submitted yet (409 otherwise)."""
    who = actors.caller(caller.id)
    view = await run_in_threadpool(
        lambda: cancel_order(
            settings.database_url, who, check_id(order_id), dispatch=broker.dispatch
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
    return await retry_by_id(
        order_id, request, who=actors.caller(caller.id), settings=settings, broker=broker
    )


@router.post("/retries", response_model=RetryResponse, responses=errors(401, 409, 422))
async def retry_matching(
    caller: Caller,
    settings: SettingsDep,
    broker: BrokerDep,
    request: Annotated[RetryRequest | None, Body()] = None,
) -> Response:
    """Schedule a retry of every order of the caller matching the filter (default: failed).

    ``submit_unknown`` orders are never retried here (409 with how many matched: an operator
    resolves each, after a fresh look upstream). With ``dry_run`` nothing is scheduled:
    ``{"scheduled": 0, "matched": n, "sample": [ids]}``.
    A large retry is spread at ``ORDERS_RETRY_SPREAD_PER_S`` orders per second.
    """
    return await retry_filtered(
        request or RetryRequest(),
        who=actors.caller(caller.id),
        settings=settings,
        broker=broker,
    )


async def retry_by_id(
    order_id: str,
    request: RetryOneRequest | None,
    *,
    who: Actor,
    settings: Settings,
    broker: Broker,
) -> Response:
    """Map a retry of one order (a caller's or an operator's) to the action."""
    at = request.at if request else None
    n = await run_in_threadpool(
        lambda: retry_order(
            settings.database_url, who, check_id(order_id), at=at, dispatch=broker.dispatch
        )
    )
    return json_response({"scheduled": n})


async def retry_filtered(
    request: RetryRequest,
    *,
    who: Actor,
    settings: Settings,
    broker: Broker,
    caller_id: str | None = None,
) -> Response:
    """Map a retry by filter (a caller's, or an operator's narrowed to ``caller_id``) to the
    action: its dry run, or the retry itself."""
    flt = by_filter.RetryFilter(
        Status(request.status),
        request.reason,
        request.batch_id,
        request.external_id,
        caller_id=caller_id,
    )
    if request.dry_run:
        dry = await in_session(settings, by_filter.count_matching, who, flt)
        return json_response(dry.answer())
    n = await run_in_threadpool(
        lambda: by_filter.retry_matching(
            settings.database_url,
            who,
            flt,
            at=request.at,
            dispatch=broker.dispatch,
            spread_per_s=settings.retry_spread_per_s,
        )
    )
    return json_response({"scheduled": n})
