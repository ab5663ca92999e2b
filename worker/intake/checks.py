"""Checking what a caller sends before anything is written: pure functions, no I/O.

An order payload is accepted when ``schemas.upstream.parse_order`` accepts it and it can be
stored as is (``external_id`` fits its column, no NUL character anywhere: PostgreSQL text
cannot hold one). A batch is split per item: each item is a :class:`NewOrder` or an
:class:`ItemError`, so valid items go ahead while the others are reported.

Errors carry ``fields``: ``[{"field": "orderItems.0.offer.id", "message": "Field required"}]``;
``(root)`` stands for the body itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.upstream import ROOT_FIELD, OrderValidationError, parse_order, validation_errors
from worker.errors import FieldErrors, InvalidInput
from worker.ids import sha256_hex
from worker.intake.numbers import oversized_integer_path

MAX_EXTERNAL_ID_CHARS = 200
MAX_DEPTH = 254
"""Nesting levels orjson serialises (request hashes need it); deeper payloads are refused."""
MAX_MESSAGE_FIELDS = 3


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A validated payload ready to be stored."""

    payload: dict[str, Any]
    order_type: str
    external_id: str | None
    request_hash: str


def request_hash(payload: Any) -> str:
    """A stable hash of a payload (key order does not matter, list order does)."""
    return sha256_hex(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))


def new_order(payload: dict[str, Any], digest: str | None = None) -> NewOrder:
    """Wrap a payload that passed validation (``digest``: its ``request_hash``, if known)."""
    ext = payload.get("external_id")
    # An empty external_id is no external_id (upstream, our id is sent in its place).
    ext = ext if isinstance(ext, str) and ext else None
    return NewOrder(payload, str(payload["order_type"]), ext, digest or request_hash(payload))


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one batch item was not accepted."""

    message: str
    fields: FieldErrors = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "fields": self.fields}


def describe(prefix: str, fields: FieldErrors) -> str:
    """``prefix: field: message; ...`` naming the first few fields."""
    shown = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:MAX_MESSAGE_FIELDS])
    more = len(fields) - MAX_MESSAGE_FIELDS
    return f"{prefix}: {shown}" + (f" (and {more} more)" if more > 0 else "")


def duplicate_external_id(other: str) -> ItemError:
    """The error for an ``external_id`` that ``other`` (an order, an earlier item) holds with a
    different payload."""
    message = f"already used by {other} with a different payload"
    return ItemError(
        f"duplicate external_id: {message}", [{"field": "external_id", "message": message}]
    )


def decode_json(body: bytes) -> Any:
    """The decoded body, or ``InvalidInput`` (400) naming the position of the problem."""
    if not body.strip():
        raise InvalidInput(
            "request body is empty; expected JSON",
            [{"field": ROOT_FIELD, "message": "JSON body required"}],
            status_code=400,
        )
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"malformed JSON: {exc}",
            [{"field": ROOT_FIELD, "message": str(exc)}],
            status_code=400,
        ) from None
    oversized = oversized_integer_path(body)
    if oversized is not None:
        message = "integer out of range (64-bit signed at most)"
        raise InvalidInput(f"{oversized}: {message}", [{"field": oversized, "message": message}])
    return value


def _nul_paths(value: Any, path: str) -> list[str]:
    if isinstance(value, str):
        return [path or ROOT_FIELD] if "\x00" in value else []
    if isinstance(value, dict):
        found: list[str] = []
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            found.extend([child] if "\x00" in key else _nul_paths(item, child))
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _nul_paths(item, f"{path}.{i}")]
    return []


def _too_deep_path(value: Any, limit: int) -> str:
    """The path of the first container nested ``limit`` levels deep (iterative: no recursion)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= limit:
                return path or ROOT_FIELD
            pairs = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in pairs)
    return ROOT_FIELD


def _errors_of(payload: dict[str, Any], may_hold_nul: bool) -> FieldErrors:
    errors: FieldErrors = []
    ext = payload.get("external_id")
    if isinstance(ext, str) and len(ext) > MAX_EXTERNAL_ID_CHARS:
        message = f"String should have at most {MAX_EXTERNAL_ID_CHARS} characters"
        errors.append({"field": "external_id", "message": message})
    if may_hold_nul:
        errors.extend(
            {"field": p, "message": "NUL characters are not allowed"}
            for p in _nul_paths(payload, "")
        )
    return errors


def check_item(
    payload: Any, *, may_hold_nul: bool = True, max_bytes: int | None = None
) -> NewOrder | ItemError:
    """One order payload checked: ready to store, or why not (every bad field named).

    ``may_hold_nul=False`` skips the NUL scan when the raw body had no ``\\u0000`` escape.
    Payloads nested deeper than ``MAX_DEPTH`` levels are refused (they cannot be hashed).
    ``max_bytes``: a payload larger than this as JSON is refused (an order in a batch is
    bounded like a single order's body).
    """
    try:
        parse_order(payload)
        errors = _errors_of(payload, may_hold_nul)
        if not errors:
            blob = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
            if max_bytes is None or len(blob) <= max_bytes:
                return new_order(payload, sha256_hex(blob))
            message = f"order is {len(blob)} bytes as JSON, at most {max_bytes}"
            errors = [{"field": ROOT_FIELD, "message": message}]
    except OrderValidationError as exc:
        errors = validation_errors(exc)
    except (RecursionError, orjson.JSONEncodeError):
        message = f"nested too deeply (at most {MAX_DEPTH} levels)"
        errors = [{"field": _too_deep_path(payload, MAX_DEPTH), "message": message}]
    return ItemError(describe("invalid order", errors), errors)


def check_order(payload: Any, *, may_hold_nul: bool = True) -> NewOrder:
    """Validate one order payload; ``InvalidInput`` (422) names every bad field."""
    item = check_item(payload, may_hold_nul=may_hold_nul)
    if isinstance(item, ItemError):
        raise InvalidInput(item.message, item.fields)
    return item


def check_batch_shape(body: Any, max_items: int) -> list[Any]:
    """The ``orders`` list of a batch body; ``InvalidInput`` (422) names ``orders`` otherwise."""
    if not isinstance(body, dict):
        raise InvalidInput(
            'batch body must be a JSON object {"orders": [...]}',
            [{"field": ROOT_FIELD, "message": "Input should be a JSON object"}],
        )
    items = body.get("orders")
    problem = None
    if items is None:
        problem = "Field required"
    elif not isinstance(items, list):
        problem = "Input should be a list of order payloads"
    elif not items:
        problem = "List should have at least 1 item"
    elif len(items) > max_items:
        problem = f"List should have at most {max_items} items, not {len(items)}"
    if problem:
        raise InvalidInput(f"orders: {problem}", [{"field": "orders", "message": problem}])
    return items  # type: ignore[return-value]


def split_batch(
    items: list[Any], *, may_hold_nul: bool = True, max_order_bytes: int | None = None
) -> list[NewOrder | ItemError]:
    """Check each item on its own (each at most ``max_order_bytes``); one result per item."""
    return [
        check_item(payload, may_hold_nul=may_hold_nul, max_bytes=max_order_bytes)
        for payload in items
    ]


def batch_errors(results: Sequence[object]) -> FieldErrors:
    """Every item error of a batch, with fields prefixed ``orders.<index>.``."""
    return [
        {"field": f"orders.{index}.{f['field']}", "message": f["message"]}
        for index, item in enumerate(results)
        if isinstance(item, ItemError)
        for f in item.fields
    ]


def _item_hash(item: Any, result: NewOrder | ItemError) -> str:
    if isinstance(result, NewOrder):
        return result.request_hash
    try:
        return request_hash(item)
    except orjson.JSONEncodeError:
        return sha256_hex(orjson.dumps(result.fields))


def batch_hash(items: list[Any], results: list[NewOrder | ItemError]) -> str:
    """A stable hash of a batch request (the order of items matters, key order does not)."""
    parts = [_item_hash(item, r) for item, r in zip(items, results, strict=True)]
    return sha256_hex("batch\n" + "\n".join(parts))
