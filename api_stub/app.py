"""The fake upstream as a Starlette app: OAuth token, preview, submit, order objects.

Every call but the control API first meets :class:`~api_stub.front.Front` (counted; the 502
outage answers it there, whatever its path). Then :meth:`UpstreamApi._serve`: for ``/api``
only, refuse it beyond the capacity or queue it (``capacity_mode``), else hold a slot
(:mod:`api_stub.load`) and add the latency (jittered, read at admission); then serve a fault
if :func:`choose_fault` picks one, else the endpoint. With ``order_list`` off the list
answers 404 as if it did not exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import parse_qs, unquote_plus

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api_stub.config import StubConfig
from api_stub.control import control_routes
from api_stub.faults import Fault, choose_fault
from api_stub.front import Front
from api_stub.load import api_latency_s, jitter_factor, retry_after_headers
from api_stub.order_input import Problem, read_order
from api_stub.paging import decode_cursor, encode_cursor
from api_stub.pricing import build_preview
from api_stub.responses import error_response, json_response
from api_stub.state import StubState

__all__ = ["UpstreamApi", "create_app"]

Handler = Callable[[Request, bool], Awaitable[Response]]

_MAX_PAGE: Final = 1000


def _fault_response(fault: Fault) -> Response:
    status = fault.status or 502
    headers = None if fault.retry_after_s is None else {"Retry-After": str(fault.retry_after_s)}
    return error_response(status, headers=headers)


class UpstreamApi:
    """Endpoint handlers of the upstream, sharing one :class:`StubState`."""

    def __init__(self, state: StubState) -> None:
        self.state = state

    async def _serve(self, endpoint: str, request: Request, handler: Handler) -> Response:
        state = self.state
        config = state.config
        if endpoint == "token":
            return await self._answer(endpoint, request, handler)
        if config.capacity_mode == "queue":
            async with state.load.queue(config.capacity) as others_in_flight:
                return await self._held(endpoint, request, handler, others_in_flight)
        with state.load.admit(config.capacity) as others_in_flight:
            if others_in_flight is None:
                status = config.over_capacity_status
                state.refused[str(status)] += 1
                headers = retry_after_headers(config.capacity_retry_after_s)
                return error_response(status, headers=headers)
            return await self._held(endpoint, request, handler, others_in_flight)

    async def _held(
        self, endpoint: str, request: Request, handler: Handler, others_in_flight: int
    ) -> Response:
        """Serve a call that holds a slot: its latency (``config`` read now), then the answer."""
        config = self.state.config
        jitter = jitter_factor(config.jitter_sigma, self.state.jitter_rng)
        latency_s = api_latency_s(config, others_in_flight, jitter)
        if latency_s:
            await asyncio.sleep(latency_s)
        return await self._answer(endpoint, request, handler)

    async def _answer(self, endpoint: str, request: Request, handler: Handler) -> Response:
        state = self.state
        config = state.config
        fault = choose_fault(config, state.script, state.rng, endpoint)
        if fault is None:
            return await handler(request, False)
        state.faults[fault.label] += 1
        if fault.kind == "status":
            return _fault_response(fault)
        if fault.kind == "ambiguous":
            await handler(request, True)
        await asyncio.sleep(config.ambiguous_hold_s if fault.hold_s is None else fault.hold_s)
        return error_response(504)

    def _unauthorized(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.state.token_valid(token.strip()):
            return None
        self.state.counters["unauthorized"] += 1
        return error_response(401)

    def _problem_response(self, problem: Problem, *, status: int) -> Response:
        self.state.counters[f"rejected_{status}"] += 1
        return error_response(status, problem.detail if status != 404 else None)

    async def token(self, request: Request) -> Response:
        """``POST /oauth2/token``: client credentials in the form body or HTTP Basic."""
        return await self._serve("token", request, self._token)

    async def _token(self, request: Request, held: bool) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != "client_credentials":
            message = f"unsupported grant_type {grant_type!r}; use client_credentials"
            return json_response(400, {"error": "unsupported_grant_type", "message": message})
        client_id = form.get("client_id", [""])[0]
        client_secret = form.get("client_secret", [""])[0]
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            basic_id, _, basic_secret = decoded.partition(":")
            client_id, client_secret = unquote_plus(basic_id), unquote_plus(basic_secret)
        config = self.state.config
        if not (
            secrets.compare_digest(client_id.encode(), config.client_id.encode())
            and secrets.compare_digest(client_secret.encode(), config.client_secret.encode())
        ):
            self.state.counters["token_denied"] += 1
            message = "Unauthorized: invalid client credentials"
            return json_response(401, {"error": "invalid_client", "message": message})
        body = {
            "access_token": self.state.issue_token(),
            "token_type": "Bearer",
            "expires_in": max(1, int(config.token_ttl_s)),
        }
        return json_response(200, body, {"Cache-Control": "no-store"})

    async def preview(self, request: Request) -> Response:
        """``POST /api/order/preview`` and ``/api/partner/order/preview``."""
        return await self._serve("preview", request, self._preview)

    async def _preview(self, request: Request, held: bool) -> Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        read = read_order(await request.body(), self.state)
        if isinstance(read, Problem):
            # Preview documents 200/401/502 only; its 502 text covers invalid field values.
            return self._problem_response(read, status=502)
        return json_response(200, build_preview(read.payload))

    async def submit(self, request: Request) -> Response:
        """``POST /api/order``, ``/api/partner/order`` and ``/api/admin/order``."""
        return await self._serve("submit", request, self._submit)

    async def _submit(self, request: Request, held: bool) -> Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        read = read_order(await request.body(), self.state)
        if isinstance(read, Problem):
            payload_status = int(self.state.config.payload_errors)
            status = payload_status if read.kind == "payload" else 404
            return self._problem_response(read, status=status)
        stored = self.state.create_order(
            read.order,
            read.payload,
            endpoint=request.url.path,
            subscription=read.subscription,
            ambiguous=held,
        )
        return json_response(200, stored.submit_response(time.time()))

    async def get_order(self, request: Request) -> Response:
        """``GET /api/objects/limio/orders/{order_id}``."""
        return await self._serve("object", request, self._get_order)

    async def _get_order(self, request: Request, held: bool) -> Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        stored = self.state.orders.get(request.path_params["order_id"])
        if stored is None:
            return error_response(404)
        return json_response(200, stored.object_view(time.time()))

    async def list_orders(self, request: Request) -> Response:
        """``GET /api/objects/limio/orders?limit=&queryMore=``, newest first."""
        return await self._serve("list", request, self._list_orders)

    async def _list_orders(self, request: Request, held: bool) -> Response:
        if not self.state.config.order_list:
            self.state.counters["list_absent"] += 1
            return error_response(404)
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        orders = self.state.order_list
        try:
            limit = min(max(int(request.query_params.get("limit", "10")), 1), _MAX_PAGE)
            cursor = request.query_params.get("queryMore")
            end = len(orders) if not cursor else min(decode_cursor(cursor) - 1, len(orders))
        except ValueError as exc:
            # The objects API documents 200/401/502 only.
            return error_response(502, f"limit/queryMore: invalid paging value ({exc})")
        start = max(end - limit, 0)
        now = time.time()
        items = [stored.summary(now) for stored in reversed(orders[start:end])]
        next_cursor = encode_cursor(orders[start].seq) if start > 0 else None
        return json_response(
            200, {"items": items, "totalSize": len(orders), "queryMore": next_cursor}
        )


def create_app(config: StubConfig | None = None) -> Starlette:
    """Build the stub app with its own fresh state.

    Args:
        config: Behaviour of the stub; default ``StubConfig()``.
    """
    state = StubState(config or StubConfig())
    api = UpstreamApi(state)
    routes = [
        Route("/oauth2/token", api.token, methods=["POST"]),
        Route("/api/partner/order/preview", api.preview, methods=["POST"]),
        Route("/api/order/preview", api.preview, methods=["POST"]),
        Route("/api/partner/order", api.submit, methods=["POST"]),
        Route("/api/order", api.submit, methods=["POST"]),
        Route("/api/admin/order", api.submit, methods=["POST"]),
        Route("/api/objects/limio/orders", api.list_orders, methods=["GET"]),
        Route("/api/objects/limio/orders/{order_id}", api.get_order, methods=["GET"]),
        *control_routes(state),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Front, state=state)])
    app.state.stub = state
    return app
