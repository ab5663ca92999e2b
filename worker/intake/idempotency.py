"""``Idempotency-Key`` handling (IETF httpapi-idempotency-key draft, Stripe semantics).

The rule, per caller and key:

- first use: the key row is inserted in its own short transaction with ``resource_id`` NULL
  (the key is *in flight*); the order (or batch) is then created in a second transaction that
  also sets ``resource_id``. If that fails, the row is deleted so the caller can try again.
- same key, same request (same hash): the original resource is returned (a replay).
- same key, different request: :class:`~worker.errors.KeyReused` (422).
- same key while the first request is still in flight: :class:`~worker.errors.KeyInFlight`
  (409).
- keys expire ``ORDERS_IDEMPOTENCY_TTL_S`` after first use (the sweeper purges them); an
  expired key, or one left in flight for ``STALE_IN_FLIGHT_S`` by a crashed process, is
  treated as unused.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from worker.db import transaction
from worker.errors import KeyInFlight, KeyReused
from worker.models import IdempotencyKey

log = structlog.get_logger(__name__)

MAX_IDEMPOTENCY_KEY_CHARS = 255
STALE_IN_FLIGHT_S = 120.0


def normalise_key(raw: str) -> str | None:
    """The key from an ``Idempotency-Key`` header (an sf-string, quotes optional); None if
    empty or longer than ``MAX_IDEMPOTENCY_KEY_CHARS``."""
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or any(ord(c) < 0x20 for c in key):
        return None
    return key


def _reusable(row: IdempotencyKey, now: datetime) -> bool:
    stale = row.resource_id is None and (
        row.created_at <= now - timedelta(seconds=STALE_IN_FLIGHT_S)
    )
    return row.expires_at <= now or stale


def claim(
    db_url: str, caller_id: str, key: str, *, request_hash: str, now: datetime, ttl_s: float
) -> str | None:
    """Take ``key`` for a new request, in its own committed transaction.

    Returns:
        None when the key is now ours (in flight), or the ``resource_id`` to replay.

    Raises:
        KeyReused: the key was used with a different ``request_hash``.
        KeyInFlight: the first request with the key is still being handled.
    """
    for _ in range(3):
        try:
            with transaction(db_url) as session:
                row = session.get(IdempotencyKey, (caller_id, key))
                if row is not None and _reusable(row, now):
                    session.delete(row)
                    session.flush()
                    row = None
                if row is None:
                    session.add(
                        IdempotencyKey(
                            caller_id=caller_id,
                            key=key,
                            request_hash=request_hash,
                            resource_id=None,
                            created_at=now,
                            expires_at=now + timedelta(seconds=ttl_s),
                        )
                    )
                    return None
                if row.request_hash != request_hash:
                    raise KeyReused(key)
                if row.resource_id is None:
                    raise KeyInFlight(key)
                return row.resource_id
        except IntegrityError:
            # Another request inserted the same key between our read and our insert.
            continue
    raise KeyInFlight(key)


def complete(session: Session, caller_id: str, key: str, resource_id: str) -> None:
    """Record what the key produced, in the transaction that created it."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.caller_id == caller_id, IdempotencyKey.key == key)
        .values(resource_id=resource_id)
    )


def release(db_url: str, caller_id: str, key: str) -> None:
    """Forget an in-flight key after its request failed (best effort: logged on error)."""
    try:
        with transaction(db_url) as session:
            session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.caller_id == caller_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.resource_id.is_(None),
                )
            )
    except SQLAlchemyError as exc:
        log.warning("idempotency_release_failed", caller_id=caller_id, error=str(exc))
