"""Control API of the stub under ``/_stub/`` (no auth): config, fault script, record, stats.

Shapes:

* ``GET|PUT /_stub/config``: the config; ``PUT`` takes a partial update.
* ``GET|POST|DELETE /_stub/script``: ``POST {"endpoint", "faults": [...], "replace"?}``;
  answers ``{"pending": {endpoint: [{"fault", "times"}]}}``.
* ``GET /_stub/orders``: ``{"count", "orders": [...], "duplicates": {external_id: n}}``.
* ``GET /_stub/stats``: ``{"tokens_issued", "tokens_active", "token_denied", "unauthorized",
  "orders_created", "rejected": {"400", "404", "502"}, "requests": {endpoint: n},
  "outage_requests": {endpoint: n}, "refused": {"429"|"503": n}, "in_flight",
  "peak_in_flight", "faults": {label: n}, "process": {"pid", "cpu_s"}}``. ``requests`` counts
  every call received, refused ones included; ``outage_requests`` those answered by the
  outage switch; ``refused`` the over-capacity refusals by status.
* ``POST /_stub/stats/reset``: zero the counters and restart the peak from the calls in
  flight now; orders, tokens, script and config stay. Answers the fresh stats.
* ``POST /_stub/reset``: optional ``{"config": {...}}`` (a full config, defaults filled in);
  forgets everything ``stats/reset`` does, and orders, tokens and script.
* ``POST /_stub/tokens/expire``: ``{"expired": n}``.
* ``POST /_stub/outage``: ``{"mode": "502"|"refuse", "for_s"?: s, "after_calls"?: n}``
  begins an outage now (or after ``n`` more calls) and ends it after ``s`` seconds;
  ``DELETE /_stub/outage`` ends it. Both answer the outage record (``stats["outage"]``)
  and ``"config"``. ``PUT /_stub/config {"outage": true}`` or ``{"refuse_connections":
  true}`` does the same by hand.
* ``GET /_stub/listeners``: ``{"public": {"host", "port", "open"}, "control": {"host",
  "port"}}`` (both ``null`` without a control port).

Stats also carry ``responses`` (``{endpoint: {status: n}}``, every answer, the outage's
and unknown paths' (``other``) included), ``mean_in_flight`` (time-weighted since the last
reset), ``queued``/``peak_queued`` (queue mode), ``outage`` (``{"mode", "windows":
[{"mode", "started_at", "ended_at"}], "calls", "calls_at": [epoch s]}``),
``connections_aborted``, ``since`` and ``now`` (epoch s).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api_stub.config import StubConfig
from api_stub.faults import ScriptRequest
from api_stub.outage import OutageRequest
from api_stub.responses import json_response
from api_stub.state import StubState
from schemas.upstream import ROOT_FIELD, validation_errors

__all__ = ["control_routes"]


class _BadBody(Exception):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise _BadBody([{"field": ROOT_FIELD, "message": "Malformed JSON body"}]) from None
    if not isinstance(body, dict):
        raise _BadBody([{"field": ROOT_FIELD, "message": "Input should be a JSON object"}])
    return body


Endpoint = Callable[[Request], Awaitable[Response]]


def _guard(handler: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ValidationError as exc:
            errors = validation_errors(exc)
        except _BadBody as exc:
            errors = exc.errors
        except ValueError as exc:
            # A config that validates but this stub cannot serve (refusing without a control port).
            field, _, message = str(exc).partition(": ")
            errors = [{"field": field, "message": message or field}]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return json_response(400, {"message": message, "errors": errors})

    return guarded


def control_routes(state: StubState) -> list[Route]:
    """Routes of the control API, bound to ``state``."""

    def config_body() -> dict[str, Any]:
        return state.config.model_dump(mode="json")

    async def get_config(request: Request) -> Response:
        return json_response(200, config_body())

    async def settled() -> None:
        if state.public_port is not None:
            await state.public_port.settled()

    async def put_config(request: Request) -> Response:
        state.configure(state.config.updated(await _body(request)))
        await settled()
        return json_response(200, config_body())

    async def post_outage(request: Request) -> Response:
        state.schedule_outage(OutageRequest.model_validate(await _body(request)))
        await settled()
        return json_response(200, state.outages.view() | {"config": config_body()})

    async def delete_outage(request: Request) -> Response:
        state.end_outage()
        await settled()
        return json_response(200, state.outages.view() | {"config": config_body()})

    async def listeners(request: Request) -> Response:
        port = state.public_port
        return json_response(200, port.view() if port else {"public": None, "control": None})

    async def get_script(request: Request) -> Response:
        return json_response(200, {"pending": state.script.pending()})

    async def post_script(request: Request) -> Response:
        script = ScriptRequest.model_validate(await _body(request))
        faults = [(entry.to_fault(state.config), entry.times) for entry in script.faults]
        state.script.add(script.endpoint, faults, replace=script.replace)
        return json_response(200, {"pending": state.script.pending()})

    async def delete_script(request: Request) -> Response:
        state.script.clear()
        return json_response(200, {"pending": {}})

    async def orders(request: Request) -> Response:
        now = time.time()
        records = [stored.record(now) for stored in state.order_list]
        body = {"count": len(records), "orders": records, "duplicates": state.duplicates()}
        return json_response(200, body)

    async def stats(request: Request) -> Response:
        return json_response(200, state.stats())

    async def reset_stats(request: Request) -> Response:
        state.reset_stats()
        return json_response(200, state.stats())

    async def reset(request: Request) -> Response:
        body = await _body(request)
        config = StubConfig.model_validate(body["config"]) if "config" in body else None
        state.reset(config)
        await settled()
        return json_response(200, {"config": config_body()})

    async def expire_tokens(request: Request) -> Response:
        return json_response(200, {"expired": state.expire_tokens()})

    return [
        Route("/_stub/config", _guard(get_config), methods=["GET"]),
        Route("/_stub/config", _guard(put_config), methods=["PUT"]),
        Route("/_stub/script", _guard(get_script), methods=["GET"]),
        Route("/_stub/script", _guard(post_script), methods=["POST"]),
        Route("/_stub/script", _guard(delete_script), methods=["DELETE"]),
        Route("/_stub/orders", _guard(orders), methods=["GET"]),
        Route("/_stub/stats", _guard(stats), methods=["GET"]),
        Route("/_stub/stats/reset", _guard(reset_stats), methods=["POST"]),
        Route("/_stub/reset", _guard(reset), methods=["POST"]),
        Route("/_stub/tokens/expire", _guard(expire_tokens), methods=["POST"]),
        Route("/_stub/outage", _guard(post_outage), methods=["POST"]),
        Route("/_stub/outage", _guard(delete_outage), methods=["DELETE"]),
        Route("/_stub/listeners", _guard(listeners), methods=["GET"]),
    ]
