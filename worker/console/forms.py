"""The console's actions (POST, each with the session's CSRF token): retry one order or a
filter, cancel, resolve a held order, replay failed webhooks, revoke a key, sign in and out.

Each form maps its fields to one action of :mod:`worker.actions` (the one the operator API
calls), as ``operator:<name>``; the answer is a redirect back with a message (``msg``) or the
action's refusal (``error``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from worker.actions import actor as actors
from worker.actions import retry_filter as by_filter
from worker.actions.cancel import cancel_order
from worker.actions.lookup import shared_lookup
from worker.actions.replay import replay_failed
from worker.actions.resolve import resolve_held
from worker.actions.retry_one import retry_order
from worker.actions.revoke import revoke_key
from worker.api.auth import Authenticator
from worker.batches import actions as batch_actions
from worker.console.session import COOKIE, Sessions
from worker.console.web import Action, SignInThrottle, form_fields, redirect, render
from worker.db import transaction
from worker.errors import InvalidInput, OrderError
from worker.intake.callers import ROLE_OPERATOR, end_sessions, hash_key
from worker.models import Caller
from worker.settings import Settings
from worker.states import RETRYABLE_BY_OPERATOR, Status

router = APIRouter(prefix="/console", include_in_schema=False)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _at(value: str | None, name: str = "at") -> datetime | None:
    """A form's time (``datetime-local`` or ISO 8601), or None for "now"."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name}: {value!r} is not an ISO 8601 time") from None


async def _run(back: str, fn: Callable[[], Any], done: Callable[[Any], str]) -> Response:
    """Run a blocking action; redirect to ``back`` with its message or its refusal."""
    try:
        result = await run_in_threadpool(fn)
    except OrderError as exc:
        return redirect(back, error=getattr(exc, "message", None) or str(exc))
    return redirect(back, msg=done(result))


@router.post("/login")
async def login(request: Request) -> Response:
    """Sign in with an operator key: a session cookie, then the page asked for."""
    form = await form_fields(request)
    key = form.get("key", "").strip()
    throttle: SignInThrottle = request.app.state.console_throttle
    client = request.client.host if request.client else "-"
    wait_s = throttle.wait_s(client)
    if wait_s > 0:
        message = f"Too many failed sign-ins from this address: wait {math.ceil(wait_s)} s."
        response: Response = render(request, "login.html", {"error": message}, 429)
        response.headers["Retry-After"] = str(math.ceil(wait_s))
        return response
    authenticator: Authenticator = request.app.state.authenticator
    owner = (
        (authenticator.cached(key) or await run_in_threadpool(authenticator.lookup, key))
        if key
        else None
    )
    if owner is None:
        throttle.failed(client)
        return render(request, "login.html", {"error": "Unknown or revoked key."}, 401)
    if owner.role != ROLE_OPERATOR:
        message = "This is a caller key: only operator keys open the console."
        return render(request, "login.html", {"error": message}, 403)
    sessions: Sessions = request.app.state.console_sessions
    settings = _settings(request)
    bound = await run_in_threadpool(_binding, settings.database_url, owner.id, key)
    if bound is None:  # rotated or revoked within the key cache's 2 s
        return render(request, "login.html", {"error": "Unknown or revoked key."}, 401)
    value, _ = sessions.issue(owner.id, owner.name, generation=bound[0], key_hash=bound[1])
    target = form.get("next") or "/console/overview"
    if not target.startswith("/console/") or target.startswith("/console//"):
        target = "/console/overview"
    response = redirect(target)
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(sessions.max_age_s),
        httponly=True,
        samesite="strict",
        # Behind a TLS proxy: ORDERS_CONSOLE_SECURE_COOKIE, or the proxy's X-Forwarded-Proto
        # from FORWARDED_ALLOW_IPS (uvicorn's proxy headers) makes the scheme https.
        secure=settings.console_secure_cookie or request.url.scheme == "https",
        path="/console",
    )
    return response


def _binding(db_url: str, operator_id: str, key: str) -> tuple[int, str] | None:
    """The operator's session generation and stored key hash, if ``key`` is still its key."""
    with transaction(db_url) as session:
        caller = session.get(Caller, operator_id)
        if caller is None or caller.revoked_at is not None or caller.key_hash != hash_key(key):
            return None
        return caller.session_generation, caller.key_hash


@router.post("/logout")
async def logout(request: Request, action: Action) -> Response:
    """Sign out: every session of this operator ends (its session generation moves on)."""
    me, _ = action

    def run() -> None:
        with transaction(_settings(request).database_url) as session:
            end_sessions(session, me.operator_id)

    await run_in_threadpool(run)
    response = redirect("/console/login", msg="Signed out.")
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.post("/retry")
async def retry_matching(request: Request, action: Action) -> Response:
    """Retry every order matching the form's filter (after its dry run on ``GET /retry``)."""
    me, form = action
    settings = _settings(request)
    status = form.get("status") or "failed"
    if status not in RETRYABLE_BY_OPERATOR:
        return render(request, "error.html", {"message": f"{status} orders cannot be retried"}, 422)
    flt = by_filter.RetryFilter(
        Status(status),
        reason=form.get("reason") or None,
        batch_id=form.get("batch") or None,
        caller_id=form.get("caller") or None,
    )
    broker = request.app.state.broker
    return await _run(
        "/console/attention",
        lambda: by_filter.retry_matching(
            settings.database_url,
            actors.operator(me.name),
            flt,
            at=_at(form.get("at")),
            dispatch=broker.dispatch,
            spread_per_s=settings.retry_spread_per_s,
        ),
        lambda n: f"Retry scheduled for {n} orders.",
    )


@router.post("/orders/{order_id}/retry")
async def retry_one(request: Request, order_id: str, action: Action) -> Response:
    me, form = action
    settings = _settings(request)
    return await _run(
        f"/console/orders/{order_id}",
        lambda: retry_order(
            settings.database_url,
            actors.operator(me.name),
            order_id,
            at=_at(form.get("at")),
            dispatch=request.app.state.broker.dispatch,
        ),
        lambda n: "Retry scheduled.",
    )


@router.post("/orders/{order_id}/cancel")
async def cancel(request: Request, order_id: str, action: Action) -> Response:
    me, _ = action
    settings = _settings(request)
    return await _run(
        f"/console/orders/{order_id}",
        lambda: cancel_order(
            settings.database_url,
            actors.operator(me.name),
            order_id,
            dispatch=request.app.state.broker.dispatch,
        ),
        lambda view: "Cancelled.",
    )


@router.post("/batches/{batch_id}/{verb}")
async def batch_action(request: Request, batch_id: str, verb: str, action: Action) -> Response:
    """Approve, resume or cancel a batch, recorded in its history as ``operator:<name>``."""
    me, _ = action
    settings = _settings(request)
    fn = _BATCH_ACTIONS.get(verb)
    back = f"/console/batches/{batch_id}"
    if fn is None:
        return redirect(back, error=f"unknown batch action {verb!r}")
    return await _run(
        back,
        lambda: fn(
            settings.database_url,
            None,
            batch_id,
            actor=actors.operator(me.name).label,
            dispatch=request.app.state.broker.dispatch,
        ),
        lambda r: f"{verb.capitalize()}: {r.released} released, {r.cancelled} cancelled.",
    )


_BATCH_ACTIONS: dict[str, Callable[..., Any]] = {
    "approve": batch_actions.approve,
    "resume": batch_actions.resume,
    "cancel": batch_actions.cancel,
}


@router.post("/orders/{order_id}/resolve")
async def resolve(request: Request, order_id: str, action: Action) -> Response:
    """Found upstream as ``upstream_id`` (checked upstream), or ``not_created`` (re-submit)."""
    me, form = action
    back = form.get("back") or f"/console/orders/{order_id}"
    if not back.startswith("/console/"):
        back = f"/console/orders/{order_id}"
    upstream_id = (form.get("upstream_id") or "").strip() or None
    if form.get("decision") == "not_created":
        upstream_id = None
    elif upstream_id is None:
        return redirect(
            back, error="Give the upstream order id (order-...), or choose not created."
        )
    lookup = shared_lookup(request.app.state)
    settings = _settings(request)

    def done(view: dict[str, Any]) -> str:
        if upstream_id is None:
            return f"{order_id}: not created upstream; re-submitting."
        return f"{order_id}: found upstream as {upstream_id}; now {view['status']}."

    return await _run(
        back,
        lambda: resolve_held(
            settings.database_url,
            actors.operator(me.name),
            order_id,
            upstream_id=upstream_id,
            lookup=lookup.get,
            search=lookup.search,
            dispatch=request.app.state.broker.dispatch,
        ),
        done,
    )


@router.post("/webhooks/{endpoint_id}/replay")
async def replay(request: Request, endpoint_id: str, action: Action) -> Response:
    me, form = action
    settings = _settings(request)
    return await _run(
        f"/console/webhooks?endpoint={endpoint_id}",
        lambda: replay_failed(
            settings.database_url,
            actors.operator(me.name),
            endpoint_id,
            since=_at(form.get("since"), "since"),
            dispatch=request.app.state.broker.dispatch,
        ),
        lambda n: f"Replaying {n} failed deliveries.",
    )


@router.post("/callers/revoke")
async def revoke(request: Request, action: Action) -> Response:
    me, form = action
    settings = _settings(request)
    return await _run(
        "/console/callers",
        lambda: revoke_key(settings.database_url, actors.operator(me.name), form.get("name", "")),
        lambda done: f"Key {done.name} revoked.",
    )
