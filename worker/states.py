"""The order state machine: pure data and decisions, no I/O.

received -> previewing -> previewed -> submitting -> submitted -> complete
                |             ^  |          |             |
                v             |  v          v             v
             received      (retry)     submit_unknown   failed
side exits: rejected (permanent refusal), failed (budget spent), cancelled (before submit)
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "received"
    PREVIEWING = "previewing"
    PREVIEWED = "previewed"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    COMPLETE = "complete"
    REJECTED = "rejected"
    FAILED = "failed"
    SUBMIT_UNKNOWN = "submit_unknown"
    CANCELLED = "cancelled"


S = Status

TERMINAL: frozenset[Status] = frozenset({S.COMPLETE, S.REJECTED, S.FAILED, S.CANCELLED})
IN_FLIGHT: frozenset[Status] = frozenset({S.PREVIEWING, S.SUBMITTING})
"""States held by a worker's lease; the sweeper recovers them when the lease expires."""
RESTING: frozenset[Status] = frozenset({S.RECEIVED, S.PREVIEWED, S.SUBMITTED, S.SUBMIT_UNKNOWN})
"""States a worker may pick an order up from."""
CANCELLABLE: frozenset[Status] = frozenset({S.RECEIVED, S.PREVIEWED})
RETRYABLE_BY_OPERATOR: frozenset[Status] = frozenset({S.FAILED, S.SUBMIT_UNKNOWN})

ALLOWED: dict[Status, frozenset[Status]] = {
    S.RECEIVED: frozenset({S.PREVIEWING, S.CANCELLED}),
    S.PREVIEWING: frozenset({S.PREVIEWED, S.RECEIVED, S.REJECTED, S.FAILED}),
    S.PREVIEWED: frozenset({S.SUBMITTING, S.CANCELLED}),
    S.SUBMITTING: frozenset(
        {S.SUBMITTED, S.COMPLETE, S.PREVIEWED, S.REJECTED, S.FAILED, S.SUBMIT_UNKNOWN}
    ),
    S.SUBMITTED: frozenset({S.COMPLETE, S.FAILED}),
    # submit_unknown -> submit_unknown records a reconcile decision (held for an operator).
    S.SUBMIT_UNKNOWN: frozenset({S.SUBMIT_UNKNOWN, S.SUBMITTED, S.COMPLETE, S.PREVIEWED}),
    # An operator's retry of a failed order re-enters where the order stopped.
    S.FAILED: frozenset({S.RECEIVED, S.PREVIEWED, S.SUBMITTED}),
    S.COMPLETE: frozenset(),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
}


def can_move(frm: Status, to: Status) -> bool:
    """Whether ``frm -> to`` is a legal transition."""
    return to in ALLOWED[frm]


def check_move(frm: Status, to: Status) -> None:
    """Raise ``ValueError`` for an illegal transition (a programming error, not a race)."""
    if not can_move(frm, to):
        raise ValueError(f"illegal transition {frm} -> {to}")


def retry_entry(previewed: bool, submitted: bool, upstream_id: str | None) -> Status:
    """Where an operator's retry of a ``failed`` order re-enters the pipeline."""
    if submitted and upstream_id:
        return S.SUBMITTED
    return S.PREVIEWED if previewed else S.RECEIVED


def upstream_status_outcome(upstream_status: str | None) -> Status:
    """Map an upstream order status (an open set) to ours: complete, failed or still submitted."""
    value = (upstream_status or "").strip().lower()
    if value in {"complete", "completed", "order complete", "change complete", "active"}:
        return S.COMPLETE
    if value in {"failed", "failure", "error", "cancelled", "rejected"}:
        return S.FAILED
    return S.SUBMITTED
