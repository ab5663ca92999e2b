"""The console's plumbing: templates, static files, who is signed in, CSRF, form bodies.

Pages depend on :func:`signed_in` (no valid session: a redirect to the sign-in page); actions
depend on :func:`acting` (a valid session *and* its CSRF token in the form, else 401/403).
A session stops working as soon as its operator key is revoked (checked on every request).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from worker.console.session import COOKIE, ConsoleSession, Sessions, console_secret
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


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """``templates/name`` with the session, the flash message and ``context``."""
    base = {
        "me": getattr(request.state, "console", None),
        "msg": request.query_params.get("msg"),
        "error": request.query_params.get("error"),
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)


def redirect(path: str, **params: str | None) -> RedirectResponse:
    """A 303 to ``path`` with the non-empty ``params`` (``msg``/``error`` are shown there)."""
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


def _operator_active(db_url: str, operator_id: str) -> bool:
    with read_session(db_url) as session:
        row = session.execute(
            select(Caller.role, Caller.revoked_at).where(Caller.id == operator_id)
        ).first()
    return row is not None and row.role == ROLE_OPERATOR and row.revoked_at is None


async def _session(request: Request) -> ConsoleSession:
    sessions: Sessions = request.app.state.console_sessions
    settings: Settings = request.app.state.settings
    console = sessions.read(request.cookies.get(COOKIE))
    if console is None or not await run_in_threadpool(
        _operator_active, settings.database_url, console.operator_id
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


async def _sign_in_required(request: Request, _: Exception) -> Response:
    if request.method == "GET":
        return redirect("/console/login", next=request.url.path)
    return render(request, "login.html", {"error": "Sign in first."}, status_code=401)


async def _csrf_refused(request: Request, _: Exception) -> Response:
    message = "This action did not come from a console page (CSRF token missing or wrong)."
    return render(request, "error.html", {"message": message}, status_code=403)


def install(app: FastAPI) -> None:
    """Mount the console (pages, actions, static files) on ``app``."""
    from worker.console import forms, pages

    settings: Settings = app.state.settings
    app.state.console_sessions = Sessions(
        console_secret(settings), max_age_s=settings.console_session_s
    )
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(pages.router)
    app.include_router(forms.router)
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(CsrfRefused, _csrf_refused)
