"""A small client of the intake API, for the ``orders`` client commands and the demo."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import tenacity

from worker.states import TERMINAL

T = TypeVar("T")


class ApiCallError(RuntimeError):
    """The API answered an error; the message is the API's."""

    def __init__(self, status_code: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.body = body


class ApiUnavailable(RuntimeError):
    """The API kept failing (5xx, connection errors) for longer than the caller would wait."""


def transient(exc: Exception) -> bool:
    """Whether trying the same call again may work: a 5xx (an API process or the database
    behind it restarting), a 429, or a connection error or timeout."""
    if isinstance(exc, ApiCallError):
        return exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, httpx.TransportError)


def describe(exc: Exception) -> str:
    """One line naming the failure (an httpx exception's message may be empty)."""
    return str(exc) if isinstance(exc, ApiCallError) else f"{type(exc).__name__}: {exc}"


def with_retries(
    call: Callable[[], T],
    *,
    give_up_after_s: float,
    what: str,
    retry_also: Callable[[Exception], bool] = lambda _: False,
    on_retry: Callable[[Exception, float], None] | None = None,
    first_delay_s: float = 0.5,
    max_delay_s: float = 10.0,
) -> T:
    """``call()``, again after transient failures with capped full-jitter backoff (the
    pipeline's rule), until it succeeds or ``give_up_after_s`` have passed since the first
    attempt; the last wait is cut so that the final attempt falls on the deadline.

    Raises:
        ApiUnavailable: still failing after ``give_up_after_s``; says what and why.
        ApiCallError: a failure that is not transient (nor ``retry_also``), at once.
    """
    backoff = tenacity.wait_random_exponential(multiplier=first_delay_s, max=max_delay_s)

    def wait_s(state: tenacity.RetryCallState) -> float:
        return max(0.0, min(backoff(state), give_up_after_s - (state.seconds_since_start or 0.0)))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            on_retry(_failure(state), state.next_action.sleep)

    def give_up(state: tenacity.RetryCallState) -> T:
        exc = _failure(state)
        failing_s = state.seconds_since_start or 0.0
        raise ApiUnavailable(
            f"{what}: gave up after {failing_s:.0f} s of failures; last: {describe(exc)}"
        ) from exc

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda e: (
                isinstance(e, ApiCallError | httpx.TransportError)
                and (transient(e) or retry_also(e))
            )
        ),
        wait=wait_s,
        stop=tenacity.stop_after_delay(give_up_after_s),
        before_sleep=before_sleep,
        retry_error_callback=give_up,
        reraise=True,
    )
    return retrying(call)


def _failure(state: tenacity.RetryCallState) -> Exception:
    """The exception of the attempt that just failed (only called after a failure)."""
    assert state.outcome is not None
    exc = state.outcome.exception()
    assert isinstance(exc, Exception)
    return exc


class ApiClient:
    """Calls ``/v1`` with a caller's key."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout_s: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self._http.headers["Authorization"] = f"Bearer {key}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        body = orjson.loads(response.content) if response.content else None
        if response.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else response.text
            raise ApiCallError(response.status_code, str(message), body)
        return body

    def submit_batch(self, payloads: list[dict[str, Any]], idempotency_key: str) -> dict[str, Any]:
        return dict(
            self._call(
                "POST",
                "/v1/orders/batch",
                content=orjson.dumps({"orders": payloads}),
                headers={"Idempotency-Key": idempotency_key, "Content-Type": "application/json"},
            )
        )

    def create_webhook_endpoint(
        self, url: str, *, event_types: list[str] | None = None
    ) -> dict[str, Any]:
        """Register a webhook endpoint; the answer carries its secret (shown once)."""
        body = {"url": url, "event_types": event_types}
        return dict(self._call("POST", "/v1/webhook-endpoints", json=body))

    def batch(self, batch_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/batches/{batch_id}"))

    def batch_results(self, batch_id: str, *, after: int = -1) -> Iterator[dict[str, Any]]:
        """The batch's results file from index ``after`` on, line by line as it streams."""
        params = {"after": after}
        with self._http.stream("GET", f"/v1/batches/{batch_id}/results", params=params) as r:
            if r.status_code >= 400:
                r.read()
                body = orjson.loads(r.content) if r.content else None
                message = body.get("message") if isinstance(body, dict) else r.text
                raise ApiCallError(r.status_code, str(message), body)
            for line in r.iter_lines():
                if line:
                    yield orjson.loads(line)

    def batch_action(self, batch_id: str, action: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/batches/{batch_id}/{action}"))

    def order(self, order_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/orders/{order_id}"))

    def events(self, order_id: str) -> list[dict[str, Any]]:
        body = self._call("GET", f"/v1/orders/{order_id}/events")
        return list(body["items"] if isinstance(body, dict) else body)

    def orders(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every order matching ``filters``, following the cursor."""
        params = {k: v for k, v in filters.items() if v is not None} | {"limit": 1000}
        while True:
            page = self._call("GET", "/v1/orders", params=params)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def retry(self, order_id: str | None = None, **filters: Any) -> int:
        return int(self.retry_answer(order_id, **filters)["scheduled"])

    def retry_answer(
        self, order_id: str | None = None, *, operator: bool = False, **filters: Any
    ) -> dict[str, Any]:
        """The retry answer: ``{"scheduled"}``, or with ``dry_run=True`` also ``matched`` and
        ``sample``. ``operator``: the operator API (an operator key; any caller's orders)."""
        body = {k: v for k, v in filters.items() if v is not None}
        base = "/v1/operator" if operator else "/v1"
        path = f"{base}/orders/{order_id}/retry" if order_id else f"{base}/retries"
        return dict(self._call("POST", path, json=body))

    def resolve(self, order_id: str, *, upstream_id: str | None) -> dict[str, Any]:
        """An operator's decision on a held order (operator key): found as ``upstream_id``,
        or (None) not created upstream."""
        body = {"upstream_id": upstream_id} if upstream_id else {"not_created": True}
        return dict(self._call("POST", f"/v1/operator/orders/{order_id}/resolve", json=body))

    def metrics_text(self) -> str:
        """The API's ``/metrics`` (Prometheus text; needs an operator key)."""
        return self._http.get("/metrics").text

    def close(self) -> None:
        self._http.close()


def settled(view: dict[str, Any]) -> bool:
    """Terminal, or held for an operator (``submit_unknown`` with nothing scheduled)."""
    if view["status"] in TERMINAL:
        return True
    return view["status"] == "submit_unknown" and view.get("reason") == "held_for_operator"


MAX_PATH_INDEX = 10_000
"""Largest list index a dotted CSV column may name (``orderItems.9999.quantity``): an index is
a list that long in memory, so ``orderItems.300000000`` would take gigabytes."""


def _index(part: str, cell: str) -> int:
    """A list index of a dotted path, or ``ValueError`` naming ``cell``."""
    if not part.isdigit():
        raise ValueError(f"{cell}: {part!r} is not a list index (0 to {MAX_PATH_INDEX})")
    index = int(part)
    if index > MAX_PATH_INDEX:
        raise ValueError(f"{cell}: list index {index} is above {MAX_PATH_INDEX}")
    return index


def _unflatten(row: dict[str, str], where: str = "row") -> dict[str, Any]:
    """Dotted CSV columns to nested JSON; columns ending in ``:json`` hold JSON values.

    Raises:
        ValueError: a cell that cannot be placed (an index above ``MAX_PATH_INDEX``, a name
            where a list index is due, a ``:json`` cell that is not JSON), named by ``where``
            and its column.
    """
    root: dict[str, Any] = {}
    for column, cell in row.items():
        if column is None or cell is None or cell == "":
            continue
        here = f"{where}, column {column!r}"
        name, is_json = (column[:-5], True) if column.endswith(":json") else (column, False)
        try:
            value: Any = orjson.loads(cell) if is_json else cell
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{here}: not valid JSON ({exc})") from None
        parts = name.split(".")
        node: Any = root
        for part, nxt in itertools.pairwise(parts):
            key: Any = _index(part, here) if isinstance(node, list) else part
            if isinstance(node, list):
                while len(node) <= key:
                    node.append(None)
            child = node[key] if (isinstance(node, list) or key in node) else None
            if child is None:
                child = [] if nxt.isdigit() else {}
                node[key] = child
            node = child
        last: Any = parts[-1]
        if isinstance(node, list):
            last = _index(last, here)
            while len(node) <= last:
                node.append(None)
        node[last] = value
    return root


def read_orders(path: Path) -> list[dict[str, Any]]:
    """Order payloads from JSON Lines (one object a line) or CSV.

    CSV: either a ``payload`` column holding each order as JSON, or one column per field with
    dotted paths (``billingDetails.email``, ``orderItems.0.offer.id``); cells are strings unless
    the column name ends in ``:json`` (``orderItems.0.quantity:json`` holding ``1``).
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "payload" in rows[0]:
            return [orjson.loads(r["payload"]) for r in rows]
        # Data rows start on line 2, after the header.
        return [_unflatten(r, f"{path}:{n}") for n, r in enumerate(rows, start=2)]
    payloads = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                payloads.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from None
    return payloads
