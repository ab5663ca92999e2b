"""OpenAPI details FastAPI cannot infer: raw JSON bodies, upstream payload schemas, examples.

The order endpoints read their body themselves (orjson, size checked while streaming), so
their request schemas are declared here and the upstream models are merged into
``components.schemas`` when the document is first built.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from schemas.intake import EXAMPLE_ORDER, BatchRequest, ErrorBody
from schemas.upstream import OrderPayload

REF = "#/components/schemas/{model}"
ERROR_TEXT = {
    400: "Malformed JSON or header",
    401: "Missing or invalid API key",
    403: "An operator key is required",
    404: "No such resource for this caller",
    409: "Conflict (state, or Idempotency-Key in flight)",
    413: "Body too large",
    422: "Invalid content; `fields` names each problem",
    429: "Too many requests of this caller at once; retry after `Retry-After` seconds",
    503: "A dependency (the upstream) could not be reached; try again",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for error answers."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in codes}


def json_body(schema_name: str, examples: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra=`` declaring a required JSON body of component ``schema_name``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": REF.format(model=schema_name)},
                    "examples": {name: {"value": value} for name, value in examples.items()},
                }
            },
        }
    }


ORDER_BODY = json_body(
    "OrderPayload",
    {
        "new": EXAMPLE_ORDER,
        "cancel_subscription": {
            "order_type": "cancel_subscription",
            "external_id": "partner-42-9",
            "subscriptionId": "sub-123",
            "cancelDate": "2025-03-01",
        },
    },
)
BATCH_BODY = json_body(
    "BatchRequest",
    {
        "two orders": {"orders": [EXAMPLE_ORDER, {**EXAMPLE_ORDER, "external_id": "partner-42-2"}]},
    },
)


def _body_components() -> dict[str, Any]:
    components: dict[str, Any] = {}
    for name, adapter in (
        ("OrderPayload", TypeAdapter(OrderPayload)),
        ("BatchRequest", TypeAdapter(BatchRequest)),
    ):
        schema = adapter.json_schema(ref_template=REF, mode="validation")
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    return components


def _global_errors(document: dict[str, Any]) -> None:
    """Declare the answers the middleware gives on every route, whatever the route declares.

    A NUL byte in the path or query (or malformed JSON) is a 400 anywhere; any body can be 413.
    """
    error_ref = {"$ref": REF.format(model="ErrorBody")}
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            codes = [400, 413] if "requestBody" in operation else [400]
            for code in codes:
                responses.setdefault(
                    str(code),
                    {
                        "description": ERROR_TEXT[code],
                        "content": {"application/json": {"schema": error_ref}},
                    },
                )


def install_openapi(app: FastAPI) -> None:
    """Build the document once, with the body schemas merged in."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in _body_components().items():
                schemas.setdefault(name, schema)
            schemas.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template=REF))
            _global_errors(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
