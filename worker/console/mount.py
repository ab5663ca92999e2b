"""Mount the console on the API app: its pages, its actions, static files, security headers.

The one module that knows every part of the console (``web`` is what pages and forms share).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.console import forms, pages
from worker.console.session import Sessions, console_secret
from worker.console.web import (
    HERE,
    SECURITY_HEADERS,
    CsrfRefused,
    SignInRequired,
    SignInThrottle,
    redirect,
    render,
)
from worker.settings import Settings


async def _sign_in_required(request: Request, _: Exception) -> Response:
    if request.method == "GET":
        return redirect("/console/login", next=request.url.path)
    return render(request, "login.html", {"error": "Sign in first."}, status_code=401)


async def _csrf_refused(request: Request, _: Exception) -> Response:
    message = "This action did not come from a console page (CSRF token missing or wrong)."
    return render(request, "error.html", {"message": message}, status_code=403)


class ConsoleHeaders:
    """Adds ``SECURITY_HEADERS`` to every answer under ``/console`` (plain ASGI: the body is
    streamed through untouched, and errors propagate as they would without it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/console"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """Mount the console (pages, actions, static files) on ``app``."""
    settings: Settings = app.state.settings
    app.state.console_sessions = Sessions(
        console_secret(settings), max_age_s=settings.console_session_s
    )
    app.state.console_throttle = SignInThrottle(settings.console_signin_failures_per_minute)

    app.add_middleware(ConsoleHeaders)

    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(pages.router)
    app.include_router(forms.router)
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(CsrfRefused, _csrf_refused)
