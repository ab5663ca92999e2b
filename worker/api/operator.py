"""The operator API (``/v1/operator``): act on any caller's orders with an operator key.

Each route maps its request to one action of :mod:`worker.actions` as ``operator:<name>``
(what ``orders resolve``, ``orders retry --operator`` and ``orders status --operator`` call);
a caller key answers 403, no key 401 (``worker.api.auth.current_operator``).
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from schemas.intake import (
    OperatorRetryRequest,
    OperatorStatusResponse,
    OrderView,
    ResolveRequest,
    RetryOneRequest,
    RetryResponse,
)
from worker.actions import actor as actors
from worker.actions.cancel import cancel_order
from worker.actions.lookup import UpstreamLookup, shared_lookup
from worker.actions.overview import counts_by_caller
from worker.actions.resolve import resolve_held
from worker.api.auth import CallerRef, current_operator
from worker.api.deps import BrokerDep, SettingsDep, check_id, in_session
from worker.api.errors import ApiError, json_response
from worker.api.openapi import errors
from worker.api.order_actions import retry_by_id, retry_filtered
from worker.errors import UpstreamError
from worker.flow.view import snapshot

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1/operator", tags=["operator"])
Operator = Annotated[CallerRef, Depends(current_operator)]


def upstream_lookup(request: Request) -> UpstreamLookup:
    """The app's upstream reader, built on first use."""
    return shared_lookup(request.app.state)


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
    return await retry_filtered(
        request,
        who=actors.operator(operator.name),
        settings=settings,
        broker=broker,
        caller_id=request.caller_id,
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
    return await retry_by_id(
        order_id, request, who=actors.operator(operator.name), settings=settings, broker=broker
    )


@router.post(
    "/orders/{order_id}/cancel", response_model=OrderView, responses=errors(401, 403, 404, 409)
)
async def cancel(
    order_id: str, operator: Operator, settings: SettingsDep, broker: BrokerDep
) -> Response:
    """Cancel an order of any caller that has not been submitted yet."""
    who = actors.operator(operator.name)
    view = await run_in_threadpool(
        lambda: cancel_order(
            settings.database_url, who, check_id(order_id), dispatch=broker.dispatch
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
    finds nothing; otherwise 409 and the order stays held). An unreachable upstream: 503."""
    who = actors.operator(operator.name)
    try:
        view = await run_in_threadpool(
            lambda: resolve_held(
                settings.database_url,
                who,
                check_id(order_id),
                upstream_id=body.upstream_id,
                lookup=lookup.get,
                search=lookup.search,
                dispatch=broker.dispatch,
            )
        )
    except UpstreamError as exc:
        raise ApiError(503, exc.message) from None
    return json_response(view)


@router.get("/status", response_model=OperatorStatusResponse, responses=errors(401, 403))
async def status(request: Request, _operator: Operator, settings: SettingsDep) -> Response:
    """Every caller's orders by status, and the upstream's state as the fleet left it in
    Redis (``upstream`` is null while Redis cannot be read)."""
    callers = await in_session(settings, counts_by_caller)
    upstream = await run_in_threadpool(_upstream_state, request.app.state.flow_store)
    body = {
        "callers": [
            {"id": c.id, "name": c.name, "revoked": c.revoked, "counts": c.counts, "total": c.total}
            for c in callers
        ],
        "upstream": upstream,
    }
    return json_response(body)


def _upstream_state(flow_store: Any) -> dict[str, Any] | None:
    try:
        snap = snapshot(flow_store())
    except Exception as exc:  # Redis down: the counts still answer
        log.warning("operator_status_upstream_failed", error=repr(exc))
        return None
    return {
        "breaker": snap.breaker,
        "limit": snap.limit,
        "ceiling": snap.ceiling,
        "in_flight": snap.in_flight,
        "paused_s": snap.paused_s,
        "calls": snap.calls,
    }
