"""Calls to the upstream: preview, submit, read an order, list orders, fetch a token.

Every answer is parsed into its ``schemas.upstream_responses`` model (lenient: unknown fields
kept, undocumented ones optional); an answer that does not fit is a failed call like any other
(ambiguous for a submit).

Requests travel on a wire (``worker.upstream.wire``): one keep-alive connection per thread,
all sharing one SSL context and one token cache.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from schemas.upstream_responses import (
    UPSTREAM_ID_PATTERN,
    LimioOrderObject,
    OrderListPage,
    PreviewResponse,
    SubmitResponse,
    TokenResponse,
)
from worker.errors import AuthError, PermanentError, RetryableError, UpstreamError
from worker.flow.gate import Gate
from worker.settings import Settings
from worker.upstream.classify import error_for_exception, error_for_status
from worker.upstream.token import TokenCache
from worker.upstream.wire import (
    HttpxWire,
    Reply,
    StdlibWire,
    Timeouts,
    Wire,
    proxied,
    small_client,
)

M = TypeVar("M", bound=BaseModel)
_UPSTREAM_ID = re.compile(UPSTREAM_ID_PATTERN)
DEFAULT_TOKEN_LIFETIME_S = 3600.0


def timeouts(settings: Settings) -> httpx.Timeout:
    """Timeouts by phase, from settings."""
    return httpx.Timeout(
        connect=settings.upstream_connect_timeout_s,
        read=settings.upstream_read_timeout_s,
        write=settings.upstream_write_timeout_s,
        pool=settings.upstream_pool_timeout_s,
    )


def token_lock_timeout_s(settings: Settings) -> float:
    """How long the token refresher's Redis lock lives: longer than a worst-case token fetch.

    A fetch may wait for a pooled connection, connect, write and read, each up to its timeout;
    a lock shorter than that lets a second process fetch while the first is still waiting.
    """
    worst_fetch_s = (
        settings.upstream_pool_timeout_s
        + settings.upstream_connect_timeout_s
        + settings.upstream_write_timeout_s
        + settings.upstream_read_timeout_s
    )
    return worst_fetch_s + 5.0  # a margin for Redis round trips and scheduling


def fetch_token(settings: Settings, client: httpx.Client) -> tuple[str, float]:
    """Client-credentials grant against ``/oauth2/token``; returns ``(token, expires_in_s)``."""
    form = {
        "grant_type": "client_credentials",
        "client_id": settings.upstream_client_id,
        "client_secret": settings.upstream_client_secret.get_secret_value(),
    }
    try:
        response = client.post(f"{settings.upstream_url}/oauth2/token", data=form)
    except httpx.HTTPError as exc:
        raise error_for_exception(exc, idempotent=True) from exc
    body = _json(response)
    error = error_for_status(response.status_code, body, response.headers.get("retry-after"))
    if error is not None:
        if response.status_code in (400, 401, 403):
            raise AuthError(
                "upstream_auth",
                f"token request refused: {error.message}",
                status_code=response.status_code,
            )
        raise RetryableError(
            f"token_{response.status_code}",
            error.message,
            status_code=response.status_code,
            retry_after_s=error.retry_after_s,
        )
    try:
        token = TokenResponse.model_validate(body)
    except ValidationError as exc:
        raise RetryableError("token_invalid_response", "token answer lacks access_token") from exc
    return token.access_token, token.expires_in or DEFAULT_TOKEN_LIFETIME_S


def _json(response: httpx.Response | Reply) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None


class UpstreamClient:
    """Thread-safe upstream calls; each raises an ``UpstreamError`` subclass on failure.

    With a ``gate`` every API call holds a permit of the fleet-wide budget (the token request
    is not an API call and never waits for one).
    """

    def __init__(
        self,
        settings: Settings,
        tokens: TokenCache | None,
        ssl_context: ssl.SSLContext,
        *,
        gate: Gate | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (tests: ``httpx.MockTransport``)."""
        self._settings = settings
        self._transport = transport
        self._tokens = tokens
        self._ssl = ssl_context
        self._gate = gate
        self._timeout = timeouts(settings)
        self._wire = make_wire(settings, ssl_context, transport)

    def new_http_client(self) -> httpx.Client:
        """A small httpx client with our timeouts and SSL context (the token request)."""
        return small_client(self._timeout, self._ssl, self._transport)

    def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        payload: Any = None,
        params: dict[str, Any] | None = None,
        idempotent: bool,
        budget: bool = True,
    ) -> M:
        """One request (holding a permit of the budget unless ``budget`` is false: the
        breaker's probe); the answer parsed into ``model``."""

        elapsed: list[float] = []

        def request() -> M:
            return self._request(
                method,
                path,
                model,
                payload=payload,
                params=params,
                idempotent=idempotent,
                elapsed=elapsed,
            )

        if self._gate is None or not budget:
            return request()
        return self._gate.call(request, lambda: elapsed[0] if elapsed else None)

    def _request(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        payload: Any,
        params: dict[str, Any] | None,
        idempotent: bool,
        elapsed: list[float] | None = None,
    ) -> M:
        if params:
            path = f"{path}?{urlencode(params)}"
        content = orjson.dumps(payload) if payload is not None else None
        headers = _SEND_JSON if content is not None else _ACCEPT_JSON
        try:
            response = self._send(method, path, headers, content)
        except UpstreamError:
            raise
        except httpx.HTTPError as exc:
            raise error_for_exception(exc, idempotent=idempotent) from exc
        if elapsed is not None:
            # Time to the answer, read before parsing: what the latency rule compares.
            elapsed.append(response.elapsed_s)
        if response.is_success:
            # The common case parsed once, bytes to model (no intermediate dict); anything the
            # model refuses takes the general path below, which names the failure.
            with contextlib.suppress(ValidationError):
                return model.model_validate_json(response.content)
        body = _json(response)
        error = error_for_status(
            response.status_code,
            body,
            response.headers.get("retry-after"),
            idempotent=idempotent,
        )
        if error is not None:
            raise error
        if not isinstance(body, dict):
            raise error_for_exception(
                ValueError("answer is not a JSON object"), idempotent=idempotent
            )
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise error_for_exception(exc, idempotent=idempotent) from exc

    def _send(
        self, method: str, path: str, headers: dict[str, str], content: bytes | None
    ) -> Reply:
        """One request with the shared bearer token; a 401 refreshes it and retries once."""
        if self._tokens is None:
            return self._wire.send(method, path, headers, content)
        token = self._tokens.get()
        response = self._wire.send(method, path, {**headers, **_bearer(token)}, content)
        if response.status_code != 401:
            return response
        self._tokens.invalidate(token)
        return self._wire.send(method, path, {**headers, **_bearer(self._tokens.get())}, content)

    def preview(self, payload: dict[str, Any], *, probe: bool = False) -> PreviewResponse:
        """``POST /api/partner/order/preview``: safe to repeat (``probe``: the breaker's
        probe, outside the budget)."""
        path = self._settings.upstream_preview_path
        return self._call(
            "POST", path, PreviewResponse, payload=payload, idempotent=True, budget=not probe
        )

    def submit(self, payload: dict[str, Any]) -> SubmitResponse:
        """``POST /api/partner/order``: NOT safe to repeat; transport failures are ambiguous."""
        path = self._settings.upstream_submit_path
        return self._call("POST", path, SubmitResponse, payload=payload, idempotent=False)

    def get_order(self, upstream_id: str, *, probe: bool = False) -> LimioOrderObject:
        """``GET /api/objects/limio/orders/{id}``: the stored order object (``probe``: the
        breaker's probe, outside the budget).

        Raises:
            PermanentError: ``upstream_id`` is not the shape of an upstream id (nothing sent:
                ``../../oauth2/token`` must never take our token elsewhere on the upstream).
        """
        if not _UPSTREAM_ID.fullmatch(upstream_id):
            raise PermanentError(
                "invalid_upstream_id",
                f"{upstream_id[:120]!r} is not an upstream order id (letters, digits, - and _)",
            )
        path = f"/api/objects/limio/orders/{quote(upstream_id, safe='')}"
        return self._call("GET", path, LimioOrderObject, idempotent=True, budget=not probe)

    def list_orders(self, *, limit: int = 100, query_more: str | None = None) -> OrderListPage:
        """``GET /api/objects/limio/orders``: one page of order summaries, newest first."""
        # urlencode escapes the cursor: a standard-base64 cursor carries "+", "/" and "=".
        params: dict[str, Any] = {"limit": limit}
        if query_more:
            params["queryMore"] = query_more
        path = "/api/objects/limio/orders"
        return self._call("GET", path, OrderListPage, params=params, idempotent=True)

    def close(self) -> None:
        self._wire.close()


# Every call says what it accepts and who calls (httpx sent both; some gateways refuse a
# request without a User-Agent).
_ACCEPT_JSON = {"accept": "application/json", "user-agent": "partner-order-worker"}
_SEND_JSON = {**_ACCEPT_JSON, "content-type": "application/json"}


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def make_wire(
    settings: Settings, ssl_context: ssl.SSLContext, transport: httpx.BaseTransport | None = None
) -> Wire:
    """The wire the settings ask for: http.client, unless a proxy applies to the upstream,
    ``ORDERS_UPSTREAM_HTTP=httpx`` says so, or a transport is injected."""
    t = settings
    if transport is not None or t.upstream_http == "httpx" or proxied(t.upstream_url):
        return HttpxWire(t.upstream_url, timeouts(t), ssl_context, transport=transport)
    times = Timeouts(
        t.upstream_connect_timeout_s, t.upstream_write_timeout_s, t.upstream_read_timeout_s
    )
    return StdlibWire(t.upstream_url, times, ssl_context)
