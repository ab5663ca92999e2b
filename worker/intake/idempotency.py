"""``Idempotency-Key`` handling (IETF httpapi-idempotency-key draft, Stripe semantics).

The rule, per caller and key:

- first use: the key row is inserted in its own short transaction with ``resource_id`` NULL
  (the key is *in flight*); the order (or batch) is then created in a second transaction that
  also sets ``resource_id``, only if the row is still this request's claim (same
  ``created_at``). If that fails, the row is deleted so the caller can try again.
- same key, same request (same hash): the original resource is returned (a replay).
- same key, different request: :class:`~worker.errors.KeyReused` (422).
- same key while the first request is still in flight: :class:`~worker.errors.KeyInFlight`
  (409).
- keys expire ``ORDERS_IDEMPOTENCY_TTL_S`` after first use (the sweeper purges them); an
  expired key, or one in flight for longer than ``IN_FLIGHT_S`` (a request that died with its
  process, or whose release failed because the database was down), is treated as unused.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from worker.db import transaction
from worker.errors import KeyInFlight, KeyReused
from worker.models import IdempotencyKey

log = structlog.get_logger(__name__)

MAX_IDEMPOTENCY_KEY_CHARS = 255
# A claim is the request's deadline, not a guess at how long a crash takes to notice: storing
# even a 10,000-order batch takes about a second, so a key still in flight after 10 s belongs
# to a request that died (often with the database, which also failed the release). A retry
# may then take the key over; should the old request still be running, its ``complete``
# finds the claim gone and its transaction rolls back (409), so one key never makes two
# resources. A lease renewed by the live request would need writes to a row that the
# storing transaction itself locks.
IN_FLIGHT_S = 10.0


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
    stale = row.resource_id is None and row.created_at <= now - timedelta(seconds=IN_FLIGHT_S)
    return row.expires_at <= now or stale


def _is_claim(caller_id: str, key: str, claimed_at: datetime) -> Any:
    """The key's row while it is still the in-flight claim made at ``claimed_at``."""
    return (
        (IdempotencyKey.caller_id == caller_id)
        & (IdempotencyKey.key == key)
        & (IdempotencyKey.created_at == claimed_at)
        & IdempotencyKey.resource_id.is_(None)
    )


def claim(
    db_url: str, caller_id: str, key: str, *, request_hash: str, now: datetime, ttl_s: float
) -> str | None:
    """Take ``key`` for a new request, in its own committed transaction.

    Returns:
        None when the key is now ours (in flight, claimed at ``now``: pass it to ``complete``
        and ``release``), or the ``resource_id`` to replay.

    Raises:
        KeyReused: the key was used with a different ``request_hash``.
        KeyInFlight: the first request with the key is still being handled.
    """
    for _ in range(3):
        try:
            with transaction(db_url) as session:
                row = session.get(IdempotencyKey, (caller_id, key))
                if row is not None and _reusable(row, now):
                    session.expunge(row)
                    if not _delete_as_read(session, row):
                        continue  # completed (or taken) meanwhile: read it again
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


def _delete_as_read(session: Session, row: IdempotencyKey) -> bool:
    """Delete the key's row only as it was read: a request completing it meanwhile keeps it."""
    same_resource = (
        IdempotencyKey.resource_id.is_(None)
        if row.resource_id is None
        else IdempotencyKey.resource_id == row.resource_id
    )
    gone = session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.caller_id == row.caller_id,
            IdempotencyKey.key == row.key,
            IdempotencyKey.created_at == row.created_at,
            same_resource,
        )
    )
    return bool(gone.rowcount == 1)  # type: ignore[attr-defined]


def complete(
    session: Session, caller_id: str, key: str, resource_id: str, *, claimed_at: datetime
) -> None:
    """Record what the key produced, in the transaction that created it.

    Raises:
        KeyInFlight: the claim outlived ``IN_FLIGHT_S`` and another request took the key over;
            the transaction must roll back (the other request creates the resource).
    """
    done = session.execute(
        update(IdempotencyKey)
        .where(_is_claim(caller_id, key, claimed_at))
        .values(resource_id=resource_id)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise KeyInFlight(key)


def release(db_url: str, caller_id: str, key: str, *, claimed_at: datetime) -> None:
    """Forget our in-flight claim after its request failed (best effort: logged on error;
    the claim then lapses after ``IN_FLIGHT_S``)."""
    try:
        with transaction(db_url) as session:
            session.execute(delete(IdempotencyKey).where(_is_claim(caller_id, key, claimed_at)))
    except SQLAlchemyError as exc:
        log.warning("idempotency_release_failed", caller_id=caller_id, error=str(exc))
