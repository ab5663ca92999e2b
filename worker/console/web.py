"""The console's plumbing: templates, static files, who is signed in, CSRF, form bodies.

Pages depend on :func:`signed_in` (no valid session: a redirect to the sign-in page); actions
depend on :func:`acting` (a valid session *and* its CSRF token in the form, else 401/403).
A session stops working as soon as its operator signs out or its key is revoked or rotated
(checked on every request).
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from worker.console.session import (
    COOKIE,
    ConsoleSession,
    Sessions,
    key_fingerprint,
)
from worker.db import read_session
from worker.intake.callers import ROLE_OPERATOR
from worker.models import Caller
from worker.settings import Settings
from worker.views import iso

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


class SignInRequired(Exception):
    """No valid console session (shown as the sign-in page, or 401 for an action)."""


class CsrfRefused(Exception):
    """An action without this session's CSRF token (403)."""


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = (datetime.now(UTC) - value).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


templates.env.filters["iso"] = iso
templates.env.filters["ago"] = _ago
# A batch's counts without their "total", for the progress bar.
templates.env.globals["by_status"] = lambda counts: {
    k: v for k, v in counts.items() if k != "total"
}


FLASH_COOKIE = "orders_console_flash"
FLASH_MAX_CHARS = 1000
# The console is never framed, never cached, never sniffed, and runs only its own script.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """``templates/name`` with the session, the flash message and ``context``.

    The flash message comes only from the flash cookie our own redirect set (never from the
    URL: a link cannot put words on a console page); it is shown once.
    """
    flash = _read_flash(request.cookies.get(FLASH_COOKIE))
    base = {"me": getattr(request.state, "console", None), **flash}
    response = templates.TemplateResponse(
        request, name, {**base, **context}, status_code=status_code
    )
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path="/console")
    return response


def redirect(path: str, **params: str | None) -> RedirectResponse:
    """A 303 to ``path``: ``msg``/``error`` go in a one-time flash cookie, other non-empty
    ``params`` in the query."""
    flash = {k: v[:FLASH_MAX_CHARS] for k in ("msg", "error") if (v := params.pop(k, None))}
    query = urlencode({k: v for k, v in params.items() if v})
    response = RedirectResponse(f"{path}?{query}" if query else path, status_code=303)
    if flash:
        value = base64.urlsafe_b64encode(json.dumps(flash).encode()).decode()
        response.set_cookie(
            FLASH_COOKIE, value, max_age=60, path="/console", httponly=True, samesite="strict"
        )
    return response


def _read_flash(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    try:
        data = json.loads(base64.urlsafe_b64decode(value.encode()))
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: str(data[k])[:FLASH_MAX_CHARS] for k in ("msg", "error") if data.get(k)}


class SignInThrottle:
    """Failed sign-ins per client address: at most ``per_minute`` a minute (each costs a
    database look-up); beyond, the address waits (429) before it may try again."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def wait_s(self, client: str) -> float:
        """Seconds ``client`` must wait before its next attempt (0: may try now)."""
        now = time.monotonic()
        with self._lock:
            recent = self._failures.get(client)
            if recent is None:
                return 0.0
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if not recent:
                del self._failures[client]
                return 0.0
            return max(0.0, recent[0] + 60 - now) if len(recent) >= self.per_minute else 0.0

    def failed(self, client: str) -> None:
        with self._lock:
            if len(self._failures) > 100_000:  # a flood of addresses: forget the oldest
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(client, deque()).append(time.monotonic())


def _operator_active(db_url: str, console: ConsoleSession) -> bool:
    """Whether the session's operator is still an operator, not revoked, with the same key
    and the same session generation (sign-out, rotation and revocation bump it)."""
    with read_session(db_url) as session:
        row = session.execute(
            select(
                Caller.role, Caller.revoked_at, Caller.session_generation, Caller.key_hash
            ).where(Caller.id == console.operator_id)
        ).first()
    return (
        row is not None
        and row.role == ROLE_OPERATOR
        and row.revoked_at is None
        and row.session_generation == console.generation
        and hmac.compare_digest(key_fingerprint(row.key_hash), console.key_fingerprint)
    )


async def _session(request: Request) -> ConsoleSession:
    sessions: Sessions = request.app.state.console_sessions
    settings: Settings = request.app.state.settings
    console = sessions.read(request.cookies.get(COOKIE))
    if console is None or not await run_in_threadpool(
        _operator_active, settings.database_url, console
    ):
        raise SignInRequired
    request.state.console = console
    return console


async def form_fields(request: Request) -> dict[str, str]:
    """The ``application/x-www-form-urlencoded`` body (first value of each field)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def signed_in(request: Request) -> ConsoleSession:
    """The signed-in operator (pages)."""
    return await _session(request)


async def acting(request: Request) -> tuple[ConsoleSession, dict[str, str]]:
    """The signed-in operator and the form, once its CSRF token is checked (actions)."""
    console = await _session(request)
    form = await form_fields(request)
    if not console.csrf_ok(form.get("csrf")):
        raise CsrfRefused
    return console, form


Operator = Annotated[ConsoleSession, Depends(signed_in)]
Action = Annotated[tuple[ConsoleSession, dict[str, str]], Depends(acting)]
