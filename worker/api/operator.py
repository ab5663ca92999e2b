"""The operator API (``/v1/operator``): act on any caller's orders with an operator key.

The console's actions and ``orders resolve`` / ``orders retry --operator`` call these. Every
action is recorded in the order's history as ``operator:<name>``. A caller key answers 403,
no key 401 (``worker.api.auth.current_operator``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from schemas.intake import (
    OperatorRetryRequest,
    OrderView,
    ResolveRequest,
    RetryOneRequest,
    RetryResponse,
)
from worker.api.auth import CallerRef, current_operator
from worker.api.deps import BrokerDep, SettingsDep, as_utc, check_id
from worker.api.errors import ApiError, json_response
from worker.api.openapi import errors
from worker.api.order_actions import retry_by_filter
from worker.api.upstream_lookup import UpstreamLookup
from worker.errors import UpstreamError
from worker.intake import actions, operator_actions

router = APIRouter(prefix="/v1/operator", tags=["operator"])
Operator = Annotated[CallerRef, Depends(current_operator)]


def actor(operator: CallerRef) -> str:
    """How an operator is named in an order's history."""
    return f"operator:{operator.name}"


def upstream_lookup(request: Request) -> UpstreamLookup:
    """The app's upstream reader, built on first use."""
    state = request.app.state
    if getattr(state, "upstream_lookup", None) is None:
        state.upstream_lookup = UpstreamLookup(state.settings, state.broker.url())
    lookup: UpstreamLookup = state.upstream_lookup
    return lookup


@router.post("/retries", response_model=RetryResponse, responses=errors(401, 403, 409, 422))
async def retry_matching(
    operator: Operator,
    settings: SettingsDep,
    broker: BrokerDep,
    request: Annotated[OperatorRetryRequest | None, Body()] = None,
) -> Response:
    """Retry every order matching the filter, of one caller or all; ``dry_run`` only counts.

    A large retry is spread at ``ORDERS_RETRY_SPREAD_PER_S`` orders per second.
    """
    request = request or OperatorRetryRequest()
    return await retry_by_filter(
        request,
        caller_id=request.caller_id,
        actor=actor(operator),
        settings=settings,
        broker=broker,
    )


@router.post(
    "/orders/{order_id}/retry",
    response_model=RetryResponse,
    responses=errors(401, 403, 404, 409, 422),
)
async def retry_one(
    order_id: str,
    operator: Operator,
    settings: SettingsDep,
    broker: BrokerDep,
    request: Annotated[RetryOneRequest | None, Body()] = None,
) -> Response:
    """Retry one ``failed`` order of any caller (a held ``submit_unknown`` one: 409, see
    ``resolve``)."""
    at = as_utc(request.at if request else None, "at")
    n = await run_in_threadpool(
        lambda: actions.retry_order(
            settings.database_url,
            None,
            check_id(order_id),
            at=at,
            actor=actor(operator),
            dispatch=broker.dispatch,
        )
    )
    return json_response({"scheduled": n})


@router.post(
    "/orders/{order_id}/cancel", response_model=OrderView, responses=errors(401, 403, 404, 409)
)
async def cancel(
    order_id: str, operator: Operator, settings: SettingsDep, broker: BrokerDep
) -> Response:
    """Cancel an order of any caller that has not been submitted yet."""
    view = await run_in_threadpool(
        lambda: actions.cancel_order(
            settings.database_url,
            None,
            check_id(order_id),
            actor=actor(operator),
            dispatch=broker.dispatch,
            reason="cancelled_by_operator",
        )
    )
    return json_response(view)


@router.post(
    "/orders/{order_id}/resolve",
    response_model=OrderView,
    responses=errors(401, 403, 404, 409, 422, 503),
)
async def resolve(
    order_id: str,
    body: ResolveRequest,
    operator: Operator,
    settings: SettingsDep,
    broker: BrokerDep,
    lookup: Annotated[UpstreamLookup, Depends(upstream_lookup)],
) -> Response:
    """Decide a held ``submit_unknown`` order: found upstream as ``upstream_id`` (checked: its
    ``external_id`` must be the one we sent, and no other order may be tied to it), or
    ``not_created`` (re-submitted only if a fresh look upstream, recorded in the history,
    finds nothing; otherwise 409 and the order stays held)."""
    view = await resolve_held(
        settings, broker, lookup, check_id(order_id), body.upstream_id, actor(operator)
    )
    return json_response(view)


async def resolve_held(
    settings: SettingsDep,
    broker: BrokerDep,
    lookup: UpstreamLookup,
    order_id: str,
    upstream_id: str | None,
    who: str,
) -> dict[str, object]:
    """Run :func:`operator_actions.resolve_held`; an unreachable upstream answers 503."""
    try:
        return await run_in_threadpool(
            lambda: operator_actions.resolve_held(
                settings.database_url,
                order_id,
                upstream_id=upstream_id,
                lookup=lookup.get,
                search=lookup.search,
                actor=who,
                dispatch=broker.dispatch,
            )
        )
    except UpstreamError as exc:
        raise ApiError(
            503, f"the upstream could not be asked about {upstream_id}: {exc.reason}; try again"
        ) from None
