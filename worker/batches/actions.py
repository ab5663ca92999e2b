"""Acting on a batch: approve, cancel, resume (a caller on its own batch, or an operator).

Each action is a compare-and-set of the batch's state with a history row naming who acted,
committed before the batch's orders are touched: a transaction never holds the batch row
while it waits for order rows (the pipeline takes them the other way round). Orders a state
change raced with are released or held back by the next sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.batches import rules
from worker.batches import store as batch_store
from worker.batches.view import batch_view
from worker.db import transaction
from worker.errors import BatchNotFound, WrongState
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.webhooks.outbox import record_deliveries


@dataclass(slots=True)
class ActionResult:
    batch: dict[str, Any]
    cancelled: int = 0
    released: int = 0

    def body(self) -> dict[str, Any]:
        return {"batch": self.batch, "cancelled": self.cancelled, "released": self.released}


def view(db_url: str, caller_id: str | None, batch_id: str) -> dict[str, Any]:
    with transaction(db_url) as session:
        batch = batch_store.find(session, batch_id, caller_id)
        if batch is None:
            raise BatchNotFound(batch_id)
        summary = batch_store.summaries(session, [batch_id], now=utcnow())[batch_id]
        return batch_view(batch, summary)


def priced(db_url: str, caller_id: str | None, batch_id: str) -> dict[str, Any]:
    """The batch object, with its totals added up first if it just finished previewing.

    The totals are computed once (a paged read of the previews) and kept on the batch row.
    """
    shown = view(db_url, caller_id, batch_id)
    if shown["state"] != rules.AWAITING_APPROVAL or shown["totals"] is not None:
        return shown
    with transaction(db_url) as session:
        batch_store.set_totals(session, batch_id, batch_store.compute_totals(session, batch_id))
    return view(db_url, caller_id, batch_id)


def _shown(db_url: str, caller_id: str | None, batch_id: str) -> str:
    return str(view(db_url, caller_id, batch_id)["state"])


def approve(
    db_url: str,
    caller_id: str | None,
    batch_id: str,
    *,
    actor: str,
    dispatch: Dispatch | None = None,
) -> ActionResult:
    """Submit a priced batch's previewed orders (without previewing them again).

    Only a batch ``awaiting_approval`` with every preview back can be approved (409 otherwise).
    """
    shown = str(priced(db_url, caller_id, batch_id)["state"])
    if shown != rules.AWAITING_APPROVAL:
        raise WrongState(
            f"batch {batch_id} is {shown}: only a batch awaiting_approval can be approved"
        )
    return _go_on(
        db_url,
        caller_id,
        batch_id,
        frm=rules.AWAITING_APPROVAL,
        actor=actor,
        dispatch=dispatch,
        reason="approved",
    )


def resume(
    db_url: str,
    caller_id: str | None,
    batch_id: str,
    *,
    actor: str,
    dispatch: Dispatch | None = None,
) -> ActionResult:
    """Let a halted batch go on; its stop rule is off from here (kept in its history)."""
    shown = _shown(db_url, caller_id, batch_id)
    if shown != rules.HALTED:
        raise WrongState(f"batch {batch_id} is {shown}: only a halted batch can be resumed")
    return _go_on(
        db_url,
        caller_id,
        batch_id,
        frm=rules.HALTED,
        actor=actor,
        dispatch=dispatch,
        reason="resumed",
    )


def _go_on(
    db_url: str,
    caller_id: str | None,
    batch_id: str,
    *,
    frm: str,
    actor: str,
    dispatch: Dispatch | None,
    reason: str,
) -> ActionResult:
    now = utcnow()
    with transaction(db_url) as session:
        values: dict[str, Any] = {}
        detail = None
        if frm == rules.HALTED:
            batch = batch_store.find(session, batch_id, None)
            detail = {"halt_on": batch.halt_on} if batch is not None else None
            # Whoever resumes has seen the failure: the stop rule is off for the rest of the
            # batch (it would otherwise count the same failures and halt again at once).
            values["halt_on"] = None
        moved = batch_store.move_state(
            session,
            batch_id,
            frm=[frm],
            to=rules.RUNNING,
            now=now,
            actor=actor,
            reason=reason,
            detail=detail,
            **values,
        )
    if not moved:
        raise WrongState(f"batch {batch_id} is no longer {frm}")
    with transaction(db_url) as session:
        released = batch_store.release(session, batch_id, now=now)
        batch = batch_store.find(session, batch_id, None)
        assert batch is not None
    if released and dispatch is not None:
        dispatch(released, [], callers=[batch.caller_id])
    return ActionResult(view(db_url, caller_id, batch_id), released=len(released))


def cancel(
    db_url: str,
    caller_id: str | None,
    batch_id: str,
    *,
    actor: str,
    dispatch: Dispatch | None = None,
) -> ActionResult:
    """Cancel every order of the batch not yet submitted; submitted ones go on.

    A batch already completed or cancelled answers 409.
    """
    shown = _shown(db_url, caller_id, batch_id)
    if shown in (rules.COMPLETED, rules.CANCELLED):
        raise WrongState(f"batch {batch_id} is {shown}: nothing to cancel")
    now = utcnow()
    with transaction(db_url) as session:
        moved = batch_store.move_state(
            session,
            batch_id,
            frm=[rules.RUNNING, rules.AWAITING_APPROVAL, rules.HALTED],
            to=rules.CANCELLED,
            now=now,
            actor=actor,
            reason="cancelled",
        )
    if not moved:
        raise WrongState(f"batch {batch_id} changed state meanwhile; try again")
    cancelled = 0
    deliveries: list[str] = []
    while True:
        with transaction(db_url) as session:
            events = batch_store.cancel_orders(session, batch_id, now=now, actor=actor)
            deliveries += record_deliveries(session, events)
        if not events:
            break
        cancelled += len(events)
    if deliveries and dispatch is not None:
        dispatch([], deliveries)
    return ActionResult(view(db_url, caller_id, batch_id), cancelled=cancelled)
