"""Actions on a caller's orders: cancel, retry one, retry all matching a filter.

Retries are scheduled by :mod:`worker.intake.actions` (a history row each); those due now are
enqueued after commit. Both retry calls answer ``{"scheduled": n}``. ``OrderNotFound`` and
``WrongState`` become 404 and 409 in :mod:`worker.api.errors`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from schemas.intake import OrderView, RetryOneRequest, RetryRequest, RetryResponse
from worker.api.broker import Broker
from worker.api.deps import BrokerDep, Caller, SettingsDep, as_utc, check_id, in_session
from worker.api.errors import json_response
from worker.api.openapi import errors
from worker.intake import actions
from worker.settings import Settings
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
            actor=_actor(caller.id),
            dispatch=broker.dispatch,
        )
    )
    return json_response({"scheduled": n})


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
    return await retry_by_filter(
        request or RetryRequest(),
        caller_id=caller.id,
        actor=_actor(caller.id),
        settings=settings,
        broker=broker,
    )


async def retry_by_filter(
    request: RetryRequest,
    *,
    caller_id: str | None,
    actor: str,
    settings: Settings,
    broker: Broker,
) -> Response:
    """Dry-run or schedule a retry by filter for one caller (None: every caller)."""
    flt = actions.RetryFilter(
        Status(request.status), request.reason, request.batch_id, request.external_id
    )
    at = as_utc(request.at, "at")
    if request.dry_run:
        return json_response(await dry_run(settings, caller_id, flt))
    n = await run_in_threadpool(
        lambda: actions.retry_matching(
            settings.database_url,
            caller_id,
            flt,
            at=at,
            actor=actor,
            dispatch=broker.dispatch,
            spread_per_s=settings.retry_spread_per_s,
        )
    )
    return json_response({"scheduled": n})


async def dry_run(
    settings: Settings, caller_id: str | None, flt: actions.RetryFilter
) -> dict[str, Any]:
    """The answer of a retry's dry run: how many orders it would touch, and a sample of ids."""
    matched, sample = await in_session(settings, actions.count_matching, caller_id, flt)
    return {"scheduled": 0, "matched": matched, "sample": sample}
