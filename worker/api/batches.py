"""Batches: ``GET /v1/batches/{id}``, ``GET /v1/batches``, the results file, and actions.

A caller sees and acts on its own batches only (another caller's batch answers 404). The
batch object is read from the batch row and its counts rows (``worker.batches.store``): two
indexed lookups whatever the batch's size. The results file streams JSON Lines in pages.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from schemas.batches import BatchActionResult, BatchObject, BatchPage
from worker.actions import actor as actors
from worker.api.deps import BrokerDep, Caller, SettingsDep, check_id, in_session
from worker.api.errors import json_response
from worker.api.listing import decode_cursor, encode_cursor
from worker.api.openapi import errors
from worker.batches import actions
from worker.batches import results as batch_results
from worker.batches import store as batch_store
from worker.batches.view import batch_view
from worker.errors import BatchNotFound
from worker.ids import utcnow

router = APIRouter(prefix="/v1/batches", tags=["batches"])

MAX_PAGE = 100


def read_batch(session: Session, caller_id: str | None, batch_id: str) -> dict[str, Any] | None:
    batch = batch_store.find(session, batch_id, caller_id)
    if batch is None:
        return None
    summary = batch_store.summaries(session, [batch_id], now=utcnow())[batch_id]
    return batch_view(batch, summary)


def read_page(
    session: Session, caller_id: str | None, limit: int, before_id: str | None
) -> dict[str, Any]:
    batches = batch_store.page(session, caller_id, limit=limit + 1, before_id=before_id)
    more = len(batches) > limit
    batches = batches[:limit]
    summaries = batch_store.summaries(session, [b.id for b in batches], now=utcnow())
    return {
        "items": [batch_view(b, summaries[b.id]) for b in batches],
        "next_cursor": encode_cursor(batches[-1].id) if more else None,
    }


@router.get("/{batch_id}", response_model=BatchObject, responses=errors(401, 404))
async def get_batch(batch_id: str, caller: Caller, settings: SettingsDep) -> Response:
    """The batch object: state, counts by status, pace and ETA, totals, halt."""
    view = await in_session(settings, read_batch, caller.id, check_id(batch_id))
    if view is None:
        raise BatchNotFound(batch_id)
    if view["state"] == "awaiting_approval" and view["totals"] is None:
        view = await run_in_threadpool(actions.priced, settings.database_url, caller.id, batch_id)
    return json_response(view)


@router.get("", response_model=BatchPage, responses=errors(401, 422))
async def list_batches(
    caller: Caller,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> Response:
    """The caller's batches, newest first; follow ``next_cursor`` until it is null."""
    before = decode_cursor(cursor) if cursor is not None else None
    return json_response(await in_session(settings, read_page, caller.id, limit, before))


@router.get(
    "/{batch_id}/results",
    responses={
        200: {"content": {"application/x-ndjson": {}}, "description": "JSON Lines"},
        **errors(401, 404, 422),
    },
)
async def batch_results_file(
    batch_id: str,
    caller: Caller,
    settings: SettingsDep,
    after: Annotated[
        int, Query(ge=-1, le=10_000_000, description="resume after this index (the last seen)")
    ] = -1,
    final_only: Annotated[bool, Query(description="only orders in a final state")] = False,
    limit: Annotated[int | None, Query(ge=1, le=10_000_000)] = None,
) -> Response:
    """One JSON line per order, in the batch request's order: ``index``, ``order_id``,
    ``external_id``, ``status``, ``final``, ``reason``, ``message``, ``upstream``. Answers
    while the batch runs; resume a dropped download with ``after=<last index received>``."""
    batch_id = check_id(batch_id)
    view = await in_session(settings, read_batch, caller.id, batch_id)
    if view is None:
        raise BatchNotFound(batch_id)
    lines = batch_results.stream(
        settings.database_url, batch_id, after=after, final_only=final_only, limit=limit
    )
    headers = {"X-Batch-State": str(view["state"]), "X-Batch-Total": str(view["counts"]["total"])}
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)


def _action_route(path: str, action: Any, summary: str) -> None:
    async def endpoint(
        batch_id: str, caller: Caller, settings: SettingsDep, broker: BrokerDep
    ) -> Response:
        result = await run_in_threadpool(
            lambda: action(
                settings.database_url,
                caller.id,
                check_id(batch_id),
                actor=actors.caller(caller.id).label,
                dispatch=broker.dispatch,
            )
        )
        return json_response(result.body())

    router.add_api_route(
        f"/{{batch_id}}/{path}",
        endpoint,
        methods=["POST"],
        name=f"{path}_batch",
        response_model=BatchActionResult,
        responses=errors(401, 404, 409),
        summary=summary,
    )


_action_route("approve", actions.approve, "Submit a priced batch's previewed orders")
_action_route("cancel", actions.cancel, "Cancel the batch's orders not yet submitted")
_action_route("resume", actions.resume, "Let a halted batch go on")
