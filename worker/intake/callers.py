"""Callers, operators and their API keys: a key is shown once, and only its SHA-256 is stored.

A key is ``ok_`` + 43 URL-safe characters (32 random bytes). Looking a key up by its hash
means a wrong key costs the same one indexed query as a right one, and a leaked database holds
nothing that authenticates.

Each key has a ``role``: ``caller`` (the ``/v1`` API) or ``operator`` (the console and
``/metrics``); the role is fixed at creation and the two never stand in for each other. A key
is revoked by setting ``revoked_at`` (the row stays: its orders still belong to it) and rotated
by replacing its hash, so the old key stops working at once.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from worker.errors import KeyAdminError
from worker.ids import new_id, sha256_hex, utcnow
from worker.models import Caller

KEY_PREFIX = "ok_"
MAX_KEY_CHARS = 128
"""Longer tokens cannot be ours; they are refused without a query."""
Role = Literal["caller", "operator"]
ROLE_CALLER: Role = "caller"
ROLE_OPERATOR: Role = "operator"


def hash_key(key: str) -> str:
    """The stored form of an API key (hex SHA-256)."""
    return sha256_hex(key)


def new_key() -> str:
    """A fresh plaintext API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _key_columns(key: str) -> dict[str, str]:
    return {"key_hash": hash_key(key), "key_prefix": key[: len(KEY_PREFIX) + 6]}


def create_caller(
    session: Session, name: str, *, role: Role = ROLE_CALLER, weight: int = 1
) -> tuple[Caller, str]:
    """Add a caller (or operator) named ``name``; return it with its plaintext key (never stored).

    Raises ``KeyAdminError("name_taken")`` if the name exists (and
    ``sqlalchemy.exc.IntegrityError`` on commit if another process took it meanwhile).
    """
    if session.scalar(select(Caller.id).where(Caller.name == name)) is not None:
        raise KeyAdminError("name_taken", name)
    key = new_key()
    caller = Caller(
        id=new_id("clr"),
        name=name,
        role=role,
        weight=weight,
        created_at=utcnow(),
        **_key_columns(key),
    )
    session.add(caller)
    session.flush()
    return caller, key


def authenticate(session: Session, key: str) -> Caller | None:
    """The unrevoked caller or operator owning ``key``; None for an unknown, revoked or
    malformed key. The caller of this function checks the role."""
    if not key.startswith(KEY_PREFIX) or len(key) > MAX_KEY_CHARS:
        return None
    return session.scalar(
        select(Caller).where(Caller.key_hash == hash_key(key), Caller.revoked_at.is_(None))
    )


def list_callers(session: Session) -> list[Caller]:
    """Every caller and operator, revoked ones included, oldest first."""
    return list(session.scalars(select(Caller).order_by(Caller.created_at, Caller.id)))


def _by_name(session: Session, name: str) -> Caller:
    caller = session.scalar(select(Caller).where(Caller.name == name))
    if caller is None:
        raise KeyAdminError("unknown_name", name)
    return caller


def set_weight(session: Session, name: str, weight: int) -> Caller:
    """Change a caller's share of the dispatch slots (takes effect at the next pass)."""
    caller = _by_name(session, name)
    caller.weight = weight
    return caller


def revoke(session: Session, name: str, *, now: datetime) -> Caller:
    """Revoke the key of ``name`` (idempotent: a revoked key keeps its first ``revoked_at``)."""
    caller = _by_name(session, name)
    if caller.revoked_at is None:
        caller.revoked_at = now
        caller.session_generation += 1
        session.flush()
    return caller


def end_sessions(session: Session, caller_id: str) -> None:
    """End every console session of ``caller_id`` (sign-out): bump its session generation."""
    caller = session.get(Caller, caller_id)
    if caller is not None:
        caller.session_generation += 1
        session.flush()


def rotate(session: Session, name: str) -> tuple[Caller, str]:
    """Give ``name`` a new key (returned in plaintext once); the old one stops working.

    A revoked key is not brought back by rotation: ``KeyAdminError("revoked")``.
    """
    caller = _by_name(session, name)
    if caller.revoked_at is not None:
        raise KeyAdminError("revoked", name)
    key = new_key()
    for column, value in _key_columns(key).items():
        setattr(caller, column, value)
    caller.session_generation += 1
    session.flush()
    return caller, key


def touch(session: Session, caller_id: str, *, now: datetime, min_interval_s: float) -> bool:
    """Set ``last_used_at = now`` unless it was set less than ``min_interval_s`` ago.

    The condition is in the ``UPDATE`` itself, so many processes touching one hot key write
    at most once per interval between them. True if a row was written.
    """
    result = session.execute(
        update(Caller)
        .where(
            Caller.id == caller_id,
            or_(
                Caller.last_used_at.is_(None),
                Caller.last_used_at < now - timedelta(seconds=min_interval_s),
            ),
        )
        .values(last_used_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
