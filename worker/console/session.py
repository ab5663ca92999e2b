"""Console sessions: a signed cookie naming the operator, with a CSRF token and an expiry.

The cookie holds ``{"op": operator id, "name", "csrf"}`` signed with the console secret
(itsdangerous, timestamped): it cannot be forged or extended without the secret, and it
expires after ``ORDERS_CONSOLE_SESSION_S``. Every POST must carry the session's ``csrf``
value in a form field (on top of ``SameSite=Strict``). The secret is
``ORDERS_CONSOLE_SECRET``, else a random one kept in ``$ORDERS_HOME/console.secret`` so that
every API process of one home signs alike.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from worker.settings import Settings

COOKIE = "orders_console"
SALT = "orders-console-session"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in operator."""

    operator_id: str
    name: str
    csrf: str

    def csrf_ok(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (constant-time)."""
        return token is not None and hmac.compare_digest(token, self.csrf)


def console_secret(settings: Settings) -> str:
    """The signing secret: configured, else read (or created once) under ``ORDERS_HOME``."""
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value()
    path = Path(settings.home) / "console.secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of several processes starting at once exactly one writes the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class Sessions:
    """Issues and reads session cookies."""

    def __init__(self, secret: str, *, max_age_s: float) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt=SALT)
        self.max_age_s = max_age_s

    def issue(self, operator_id: str, name: str) -> tuple[str, ConsoleSession]:
        """A new session (fresh CSRF token) and its cookie value."""
        session = ConsoleSession(operator_id, name, secrets.token_urlsafe(24))
        value = self._signer.dumps({"op": operator_id, "name": name, "csrf": session.csrf})
        return value, session

    def read(self, cookie: str | None) -> ConsoleSession | None:
        """The session in ``cookie``; None if absent, forged, malformed or expired."""
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self.max_age_s)
            return ConsoleSession(str(data["op"]), str(data["name"]), str(data["csrf"]))
        except (BadSignature, KeyError, TypeError):
            return None
