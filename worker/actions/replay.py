"""Replay an endpoint's failed webhook deliveries: they become pending again, with a fresh
attempt budget, and are handed to the delivery queue after commit (the sweeper's
``take_due_deliveries`` picks up any that enqueueing loses)."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select, update

from worker.actions.actor import Actor
from worker.actions.when import utc
from worker.db import transaction
from worker.ids import utcnow
from worker.intake import Dispatch
from worker.models import WebhookDelivery

log = structlog.get_logger(__name__)
FAILED = "failed"


def replay_failed(
    db_url: str,
    actor: Actor,
    endpoint_id: str,
    *,
    since: datetime | None = None,
    dispatch: Dispatch | None = None,
) -> int:
    """Make ``endpoint_id``'s failed deliveries created at ``since`` or later (naive is UTC;
    None: all) pending again; returns how many.

    Raises:
        InvalidInput: ``since`` is out of range.
    """
    since = utc(since, "since")
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
    log.info("webhooks_replayed", actor=actor.label, endpoint_id=endpoint_id, count=len(ids))
    if dispatch is not None and ids:
        dispatch([], ids)
    return len(ids)
