"""Replay an endpoint's failed webhook deliveries: they become pending again, with a fresh
attempt budget, and are handed to the delivery queue after commit (the sweeper's
``take_due_deliveries`` picks up any that enqueueing loses)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from worker.db import transaction
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.models import WebhookDelivery

FAILED = "failed"


def replay_failed(
    db_url: str, endpoint_id: str, *, since: datetime | None, dispatch: Dispatch | None = None
) -> int:
    """Make ``endpoint_id``'s failed deliveries created at ``since`` or later pending again;
    returns how many."""
    now = utcnow()
    where = [WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == FAILED]
    if since is not None:
        where.append(WebhookDelivery.created_at >= since)
    with transaction(db_url) as session:
        ids = list(session.scalars(select(WebhookDelivery.id).where(*where)))
        if ids:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids), WebhookDelivery.status == FAILED)
                .values(status="pending", attempts=0, due_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
    if dispatch is not None and ids:
        dispatch([], ids)
    return len(ids)
