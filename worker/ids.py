"""Identifiers and clocks: time-ordered ids so that lists and cursors follow creation order."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 12 hex digits of milliseconds since the epoch + 20 random hex digits."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def sha256_hex(data: bytes | str) -> str:
    """Hex SHA-256 of ``data`` (text is UTF-8 encoded)."""
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()
