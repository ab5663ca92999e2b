"""The console's pages (GET): overview, batches, orders, one order, needs attention,
webhooks, callers, the confirmation of a retry (its dry run), and sign-in."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.actions import actor as actors
from worker.actions import retry_filter as by_filter
from worker.actions.moves import HELD_RULE, cancel_move, is_held
from worker.api.deps import as_utc, in_session
from worker.console import queries as q
from worker.console.live import broker_state, upstream_state
from worker.console.web import Operator, redirect, render
from worker.ids import utcnow
from worker.intake.callers import list_callers
from worker.models import WebhookDelivery, WebhookEndpoint
from worker.settings import Settings
from worker.states import RETRYABLE_BY_OPERATOR, Status

router = APIRouter(prefix="/console", include_in_schema=False)
PAGE = 50
FINAL_WINDOW = timedelta(hours=24)
OVERVIEW_MAX_AGE_S = 2.0


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return as_utc(datetime.fromisoformat(value), name)
    except ValueError:
        return None


@router.get("", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    return redirect("/console/overview")


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    return render(request, "login.html", {"next": request.query_params.get("next", "")})


def _overview(session: Session) -> dict[str, Any]:
    now = utcnow()
    return {
        "counts": q.status_counts(session, now=now, final_window=FINAL_WINDOW),
        "throughput": q.throughput(session, now=now),
        "oldest": q.oldest_open(session),
        "due": q.due_counts(session, now=now),
    }


class OverviewCache:
    """The overview's figures, read at most once per ``max_age_s`` by this process whatever
    the number of open tabs (each polls every 3 s; one read is a dozen index counts)."""

    def __init__(self, max_age_s: float = OVERVIEW_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._lock = asyncio.Lock()
        self._at = -math.inf
        self._data: dict[str, Any] = {}

    async def get(self, request: Request) -> dict[str, Any]:
        async with self._lock:  # tabs arriving together share one read
            if time.monotonic() - self._at >= self.max_age_s:
                self._data = await _read_overview(request)
                self._at = time.monotonic()
            return dict(self._data)


async def _read_overview(request: Request) -> dict[str, Any]:
    settings = _settings(request)
    data = await in_session(settings, _overview)
    redis_url = request.app.state.broker.url()
    data["broker"] = broker_state(redis_url)
    data["upstream"] = upstream_state(redis_url, settings)
    data["alive"] = data["broker"].alive(settings.sweep_interval_s)
    data["statuses"] = [str(s) for s in Status]
    return data


async def _overview_context(request: Request) -> dict[str, Any]:
    state = request.app.state
    if getattr(state, "overview_cache", None) is None:
        state.overview_cache = OverviewCache()
    cache: OverviewCache = state.overview_cache
    return await cache.get(request)


@router.get("/overview", response_class=HTMLResponse)
async def overview(request: Request, me: Operator) -> Response:
    return render(request, "overview.html", await _overview_context(request))


@router.get("/overview/live", response_class=HTMLResponse)
async def overview_live(request: Request, me: Operator) -> Response:
    """The live part of the overview (polled by ``console.js``)."""
    return render(request, "overview_live.html", await _overview_context(request))


@router.get("/batches", response_class=HTMLResponse)
async def batches(request: Request, me: Operator, before: str | None = None) -> Response:
    def read(session: Session) -> dict[str, Any]:
        rows = q.batches(session, limit=20, before=before)
        return {"batches": rows, "names": q.caller_names(session)}

    data = await in_session(_settings(request), read)
    data["next"] = data["batches"][-1]["id"] if len(data["batches"]) == 20 else None
    return render(request, "batches.html", data)


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
async def batch(request: Request, batch_id: str, me: Operator) -> Response:
    def read(session: Session) -> dict[str, Any] | None:
        detail = q.batch_detail(session, batch_id)
        if detail is not None:
            detail["names"] = q.caller_names(session)
        return detail

    detail = await in_session(_settings(request), read)
    if detail is None:
        return render(request, "error.html", {"message": f"No batch {batch_id}."}, 404)
    return render(request, "batch.html", detail)


@router.get("/orders", response_class=HTMLResponse)
async def orders(request: Request, me: Operator) -> Response:
    p = request.query_params
    query = q.OrderQuery(
        caller_id=p.get("caller") or None,
        status=p.get("status") or None,
        reason=p.get("reason") or None,
        batch_id=p.get("batch") or None,
        external_id=p.get("external_id") or None,
        created_since=_when(p.get("since"), "since"),
        created_before=_when(p.get("before"), "before"),
    )

    def read(session: Session) -> dict[str, Any]:
        rows, next_id = q.order_list(session, query, limit=PAGE, after_id=p.get("cursor"))
        return {"orders": rows, "next_id": next_id, "names": q.caller_names(session)}

    data = await in_session(_settings(request), read)
    params = {k: v for k, v in p.items() if k != "cursor" and v}
    return render(
        request,
        "orders.html",
        {**data, "f": params, "statuses": [str(s) for s in Status]},
    )


@router.get("/orders/{order_id}", response_class=HTMLResponse)
async def order(request: Request, order_id: str, me: Operator) -> Response:
    detail = await in_session(_settings(request), q.order_detail, order_id)
    if detail is None:
        return render(request, "error.html", {"message": f"No order {order_id}."}, 404)
    order = detail["order"]
    detail["held"] = is_held(order)
    detail["retryable"] = order.status == Status.FAILED
    detail["cancellable"] = cancel_move(order) is not None
    return render(request, "order.html", detail)


@router.get("/attention", response_class=HTMLResponse)
async def attention(request: Request, me: Operator) -> Response:
    def read(session: Session) -> dict[str, Any]:
        held, held_total = q.held(session, limit=100)
        return {
            "halted": q.batches(session, limit=50, before=None, states=["halted"]),
            "failed": q.failed_by_reason(session),
            "held": held,
            "held_total": held_total,
            "names": q.caller_names(session),
        }

    return render(request, "attention.html", await in_session(_settings(request), read))


@router.get("/retry", response_class=HTMLResponse)
async def retry_confirm(request: Request, me: Operator) -> Response:
    """What a retry of the filter would touch (its dry run), with the button that does it."""
    p = request.query_params
    status = p.get("status") or "failed"
    if status not in RETRYABLE_BY_OPERATOR:
        return render(request, "error.html", {"message": f"{status} orders cannot be retried"}, 422)
    caller = p.get("caller") or None
    flt = by_filter.RetryFilter(
        Status(status),
        reason=p.get("reason") or None,
        batch_id=p.get("batch") or None,
        caller_id=caller,
    )
    dry = await in_session(
        _settings(request), by_filter.count_matching, actors.operator(me.name), flt
    )
    matched, sample = dry.matched, dry.sample
    if flt.status == Status.SUBMIT_UNKNOWN:
        message = f"{matched} held orders match; none can be retried in bulk: {HELD_RULE}"
        return render(request, "error.html", {"message": message}, 409)
    settings = _settings(request)
    rate = settings.retry_spread_per_s
    spread_s = int(matched // rate) if rate > 0 else 0
    return render(
        request,
        "retry.html",
        {
            "flt": flt,
            "caller": caller,
            "matched": matched,
            "sample": sample,
            "rate": rate,
            "spread_s": spread_s,
        },
    )


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks(request: Request, me: Operator, endpoint: str | None = None) -> Response:
    def read(session: Session) -> dict[str, Any]:
        endpoints = list(
            session.scalars(
                select(WebhookEndpoint).order_by(WebhookEndpoint.caller_id, WebhookEndpoint.id)
            )
        )
        # Deliveries of the last 24 hours only (a primary-key range: ids carry their time),
        # so a view costs the same whatever the size of the delivery log.
        floor = q.id_floor("msg", utcnow() - FINAL_WINDOW - q.ID_SLACK)
        stmt = select(WebhookDelivery.endpoint_id, WebhookDelivery.status, func.count()).where(
            WebhookDelivery.id >= floor
        )
        counts: dict[str, dict[str, int]] = {e.id: {} for e in endpoints}
        for endpoint_id, status, n in session.execute(
            stmt.group_by(WebhookDelivery.endpoint_id, WebhookDelivery.status)
        ):
            counts.setdefault(endpoint_id, {})[status] = n
        deliveries: list[WebhookDelivery] = []
        if endpoint:
            deliveries = list(
                session.scalars(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.endpoint_id == endpoint)
                    .order_by(WebhookDelivery.id.desc())
                    .limit(PAGE)
                )
            )
        return {
            "endpoints": endpoints,
            "counts": counts,
            "deliveries": deliveries,
            "names": q.caller_names(session),
        }

    data = await in_session(_settings(request), read)
    return render(request, "webhooks.html", {**data, "endpoint": endpoint})


@router.get("/callers", response_class=HTMLResponse)
async def callers(request: Request, me: Operator) -> Response:
    rows = await in_session(_settings(request), list_callers)
    return render(request, "callers.html", {"callers": rows})
