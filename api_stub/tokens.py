"""Bearer tokens of the stub: JWT-shaped (upstream-api.md §2: ``bearerFormat: JWT``).

A token is ``base64url(header).base64url(claims).base64url(HMAC-SHA256)`` with the claims
``iss``, ``sub`` (the client id), ``scope``, ``jti``, ``iat`` and ``exp``, signed with a
secret that lives only in this process. Clients must treat it as opaque; it is a JWT so
that a client which does peek (logs, ``exp``) meets the documented format.

A token is accepted when its signature is right, it was issued since the last reset, and
its lifetime (``token_ttl_s``, measured on the monotonic clock, so fractions of a second
work) has not run out. ``exp`` is the whole second at or before that moment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import time
from typing import Any, Final

import orjson

__all__ = ["TokenStore", "decode_claims"]

_HEADER: Final = {"alg": "HS256", "typ": "JWT"}
_ISSUER: Final = "api_stub"
_SCOPE: Final = "partner"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (for tests and for clients that peek).

    Raises:
        ValueError: ``token`` is not three base64url parts with a JSON object in the middle.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("a JWT has three dot-separated parts")
    try:
        claims = orjson.loads(_unb64url(parts[1]))
    except (binascii.Error, orjson.JSONDecodeError) as exc:
        raise ValueError(f"undecodable JWT claims: {exc}") from None
    if not isinstance(claims, dict):
        raise ValueError("JWT claims are not a JSON object")
    return claims


class TokenStore:
    """Issues and checks tokens; only the serving event loop touches it (no locks)."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        self._expires_at: dict[str, float] = {}

    def _sign(self, signing_input: str) -> str:
        return _b64url(hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest())

    def issue(self, *, client_id: str, ttl_s: float, jti: str) -> str:
        """Mint a token for ``client_id`` that stops working ``ttl_s`` from now."""
        now = time.time()
        claims = {
            "iss": _ISSUER,
            "sub": client_id,
            "scope": _SCOPE,
            "jti": jti,
            "iat": math.floor(now),
            "exp": math.floor(now + ttl_s),
        }
        signing_input = f"{_b64url(orjson.dumps(_HEADER))}.{_b64url(orjson.dumps(claims))}"
        token = f"{signing_input}.{self._sign(signing_input)}"
        self._expires_at[token] = time.monotonic() + ttl_s
        return token

    def valid(self, token: str) -> bool:
        """Whether ``token`` carries our signature, was issued here and has not expired."""
        signing_input, _, signature = token.rpartition(".")
        expected = self._sign(signing_input).encode()
        if not signing_input or not hmac.compare_digest(signature.encode(), expected):
            return False
        expires_at = self._expires_at.get(token)
        return expires_at is not None and time.monotonic() < expires_at

    def active(self) -> int:
        """How many issued tokens still work."""
        now = time.monotonic()
        return sum(1 for expires_at in self._expires_at.values() if now < expires_at)

    def expire_all(self) -> int:
        """Make every issued token expire now; return how many were still valid."""
        active = self.active()
        self._expires_at = dict.fromkeys(self._expires_at, time.monotonic())
        return active

    def forget(self) -> None:
        """Forget every issued token (they stop working); the signing secret is kept."""
        self._expires_at.clear()
