"""Console sessions: a signed cookie naming the operator, with a CSRF token and an expiry.

The cookie holds ``{"op": operator id, "name", "csrf", "gen", "key"}`` signed with the
console secret (itsdangerous, timestamped): it cannot be forged or extended without the
secret, and it expires after ``ORDERS_CONSOLE_SESSION_S``. ``gen`` is the operator's session
generation and ``key`` a fingerprint of the key signed in with: every request checks both
against the database, so a sign-out, a rotation or a revocation ends the session at once.
Every POST must carry the session's ``csrf`` value in a form field (on top of
``SameSite=Strict``). The secret is
``ORDERS_CONSOLE_SECRET``, else a random one kept in ``$ORDERS_HOME/console.secret`` so that
every API process of one home signs alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from worker.settings import ConfigError, Settings, weak_secret

COOKIE = "orders_console"
SALT = "orders-console-session"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in operator."""

    operator_id: str
    name: str
    csrf: str
    generation: int = 0
    key_fingerprint: str = ""

    def csrf_ok(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (constant-time)."""
        return token is not None and hmac.compare_digest(token, self.csrf)


def console_secret(settings: Settings) -> str:
    """The signing secret: configured, else read (or created once) under ``ORDERS_HOME``.

    Raises:
        ConfigError: the secret file holds a weak secret (empty, short, a known default).
    """
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value()
    path = Path(settings.home) / "console.secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create_once(path, secrets.token_urlsafe(32))
    secret = path.read_text().strip()
    if problem := weak_secret(secret):
        raise ConfigError(f"{path} (the console secret, ORDERS_CONSOLE_SECRET unset) {problem}")
    return secret


def _create_once(path: Path, secret: str) -> None:
    """Write ``path`` whole or not at all: a complete 0600 temporary file is linked into
    place, so a process starting at the same moment reads either nothing or all of it, and
    of several writers the first link wins (``os.link`` never replaces, unlike a rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".console.secret.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: its secret it is
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


class Sessions:
    """Issues and reads session cookies."""

    def __init__(self, secret: str, *, max_age_s: float) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt=SALT)
        self.max_age_s = max_age_s

    def issue(
        self, operator_id: str, name: str, *, generation: int, key_hash: str
    ) -> tuple[str, ConsoleSession]:
        """A new session (fresh CSRF token) bound to the operator's session ``generation``
        and key (``key_hash``, as stored), and its cookie value."""
        fingerprint = key_fingerprint(key_hash)
        session = ConsoleSession(
            operator_id, name, secrets.token_urlsafe(24), generation, fingerprint
        )
        data = {"op": operator_id, "name": name, "csrf": session.csrf}
        value = self._signer.dumps({**data, "gen": generation, "key": fingerprint})
        return value, session

    def read(self, cookie: str | None) -> ConsoleSession | None:
        """The session in ``cookie``; None if absent, forged, malformed or expired."""
        if not cookie:
            return None
        try:
            # itsdangerous types max_age as int; it only compares seconds, a float works.
            data = self._signer.loads(cookie, max_age=self.max_age_s)  # type: ignore[arg-type]
            return ConsoleSession(
                str(data["op"]),
                str(data["name"]),
                str(data["csrf"]),
                int(data["gen"]),
                str(data["key"]),
            )
        except (BadSignature, KeyError, TypeError, ValueError):
            return None


def key_fingerprint(key_hash: str) -> str:
    """What a cookie carries of the key (readable by its holder: not the stored hash itself)."""
    return hashlib.sha256(f"console-session:{key_hash}".encode()).hexdigest()[:24]
