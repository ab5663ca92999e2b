"""Callers and their API keys: a key is shown once, and only its SHA-256 is stored.

A key is ``ok_`` + 43 URL-safe characters (32 random bytes). Looking a key up by its hash
means a wrong key costs the same one indexed query as a right one, and a leaked database holds
nothing that authenticates.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.ids import new_id, sha256_hex, utcnow
from worker.models import Caller

KEY_PREFIX = "ok_"
MAX_KEY_CHARS = 128
"""Longer tokens cannot be ours; they are refused without a query."""


def hash_key(key: str) -> str:
    """The stored form of an API key (hex SHA-256)."""
    return sha256_hex(key)


def new_key() -> str:
    """A fresh plaintext API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_caller(session: Session, name: str) -> tuple[Caller, str]:
    """Add a caller named ``name`` and return it with its plaintext key (never stored).

    Raises ``sqlalchemy.exc.IntegrityError`` on commit if the name is taken.
    """
    key = new_key()
    caller = Caller(
        id=new_id("clr"),
        name=name,
        key_hash=hash_key(key),
        key_prefix=key[: len(KEY_PREFIX) + 6],
        created_at=utcnow(),
    )
    session.add(caller)
    session.flush()
    return caller, key


def authenticate(session: Session, key: str) -> Caller | None:
    """The caller owning ``key``, or None for an unknown or malformed key."""
    if not key.startswith(KEY_PREFIX) or len(key) > MAX_KEY_CHARS:
        return None
    return session.scalar(select(Caller).where(Caller.key_hash == hash_key(key)))
