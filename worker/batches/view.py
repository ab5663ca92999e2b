"""The batch object callers see (API, ``batch.*`` webhooks, CLI, console): a pure function."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from worker.batches import rules
from worker.batches.store import Summary
from worker.models import Batch


def batch_view(batch: Batch, summary: Summary) -> dict[str, Any]:
    """``schemas.batches.BatchObject`` as a plain dict (serialised with orjson)."""
    counts = summary.counts
    state = rules.shown_state(batch.state, counts)
    final = rules.final_count(counts)
    final_per_s = round(summary.recent_finals / rules.RATE_WINDOW_S, 2)
    return {
        "id": batch.id,
        "object": "batch",
        "state": state,
        "mode": batch.mode,
        "created_at": _iso(batch.created_at),
        "state_at": _iso(batch.state_at),
        "counts": dict(counts),
        "final": final,
        "first_final_at": _iso(summary.first_final_at),
        "last_final_at": _iso(summary.last_final_at),
        "final_per_s": final_per_s,
        "eta_s": rules.eta_s(state, counts.get("total", 0) - final, final_per_s),
        "halt_on": batch.halt_on,
        "halt": batch.halt if state == rules.HALTED or batch.halt else None,
        "totals": batch.totals,
        "completed_at": _iso(batch.completed_at),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")
