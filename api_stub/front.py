"""The stub's front door, before any route: every call but the control API is counted by
endpoint and answer status, can start an armed outage, and meets the outage first.

It sits before routing so that the outage covers every path, unknown ones included, and
every method, as a gateway in front of a failed upstream would.
"""

from __future__ import annotations

import time
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_stub.responses import error_response
from api_stub.state import StubState

__all__ = ["CONTROL_PREFIX", "Front", "endpoint_of"]

CONTROL_PREFIX: Final = "/_stub/"
_EXACT: Final = {
    "/oauth2/token": "token",
    "/api/partner/order/preview": "preview",
    "/api/order/preview": "preview",
    "/api/partner/order": "submit",
    "/api/order": "submit",
    "/api/admin/order": "submit",
    "/api/objects/limio/orders": "list",
}
_OBJECT_PREFIX: Final = "/api/objects/limio/orders/"


def endpoint_of(path: str) -> str:
    """The counter label of ``path``: token, preview, submit, list, object, else ``other``."""
    label = _EXACT.get(path.rstrip("/") if path != "/" else path)
    if label is not None:
        return label
    rest = path[len(_OBJECT_PREFIX) :] if path.startswith(_OBJECT_PREFIX) else ""
    return "object" if rest and "/" not in rest else "other"


class Front:
    """ASGI middleware: counts, the armed outage trigger, and the 502 outage."""

    def __init__(self, app: ASGIApp, state: StubState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        state = self.state
        endpoint = endpoint_of(scope["path"])
        state.requests[endpoint] += 1
        if endpoint != "token":
            state.count_call()
        config = state.config
        if config.outage and (endpoint != "token" or config.outage_token):
            state.outage_requests[endpoint] += 1
            state.outages.call(time.time())
            state.count_response(endpoint, 502)
            await error_response(502)(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.count_response(endpoint, int(message["status"]))
            await send(message)

        await self.app(scope, receive, counted)
