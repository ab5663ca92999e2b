"""Revoke an API key (a caller's or an operator's): every API process refuses it within the
key cache's seconds, its console sessions end, and its orders are kept."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from worker.actions.actor import Actor
from worker.db import transaction
from worker.errors import InvalidInput
from worker.ids import utcnow
from worker.intake.callers import revoke

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Revoked:
    """The key that was revoked (already revoked: its first ``revoked_at``)."""

    id: str
    name: str
    role: str
    revoked_at: datetime


def revoke_key(db_url: str, actor: Actor, name: str, *, now: datetime | None = None) -> Revoked:
    """Revoke the key named ``name`` (idempotent).

    Raises:
        InvalidInput: no name given.
        KeyAdminError: no key has that name (``unknown_name``).
    """
    if not name.strip():
        message = "name: give the name of the key to revoke"
        raise InvalidInput(message, [{"field": "name", "message": message}])
    with transaction(db_url) as session:
        caller = revoke(session, name, now=now or utcnow())
        assert caller.revoked_at is not None
        done = Revoked(caller.id, caller.name, caller.role, caller.revoked_at)
    log.info("key_revoked", actor=actor.label, name=name, role=done.role)
    return done
