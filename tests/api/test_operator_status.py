"""``GET /v1/operator/status`` and ``orders status --operator``: every caller's counts and the
upstream's state, for an operator key only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.api.conftest import CallerKey, make_caller
from tests.conftest import settings_from
from tests.helpers import add_orders, new_payload
from worker.api import create_app
from worker.cli import app as orders_cli
from worker.cli.operator_status import NO_UPSTREAM, OperatorClient, upstream_line


@pytest.fixture
def ops(clean_db: str) -> CallerKey:
    return make_caller(clean_db, "olga", role="operator")


def test_status_needs_an_operator_key(client: TestClient, alpha: CallerKey) -> None:
    """No key: 401; a caller key: 403."""
    assert client.get("/v1/operator/status").status_code == 401
    assert client.get("/v1/operator/status", headers=alpha.headers).status_code == 403


def test_status_shows_every_caller_and_the_upstream(
    client: TestClient, alpha: CallerKey, beta: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    """Each caller's counts by status (one with none too), and the budget read from Redis."""
    add_orders(clean_db, alpha.id, [new_payload(i) for i in range(2)])
    answer = client.get("/v1/operator/status", headers=ops.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [(c["name"], c["counts"], c["total"]) for c in body["callers"]] == [
        ("alpha", {"received": 2}, 2),
        ("beta", {}, 0),
    ]
    upstream = body["upstream"]
    assert upstream["breaker"] == "closed" and upstream["in_flight"] == 0
    assert 0 < upstream["limit"] <= upstream["ceiling"]


def test_status_without_redis_still_counts(
    api: Callable[..., TestClient], alpha: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    """Redis unreachable: the counts answer, ``upstream`` is null and the CLI says so."""
    client = api(redis_url="redis://127.0.0.1:1/0")
    add_orders(clean_db, alpha.id, [new_payload(1)])
    answer = client.get("/v1/operator/status", headers=ops.headers)
    assert answer.status_code == 200
    assert answer.json()["upstream"] is None
    assert answer.json()["callers"][0]["total"] == 1
    parsed = OperatorClient(str(client.base_url), ops.key, http=client).operator_status()
    assert upstream_line(parsed) == NO_UPSTREAM


@pytest.fixture
def live_api(env: dict[str, str]) -> Iterator[str]:
    """The app served by uvicorn on a free port, for the real command line."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings_from(env)), host="127.0.0.1", port=0, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _status(url: str, key: str, *extra: str) -> Any:
    return CliRunner().invoke(
        orders_cli, ["status", *extra, "--api-url", url, "--key", key], env={"COLUMNS": "200"}
    )


def test_cli_status_operator_prints_callers_and_the_upstream_line(
    live_api: str, alpha: CallerKey, ops: CallerKey, clean_db: str
) -> None:
    """``orders status --operator`` prints a row per caller and the upstream line; a caller
    key is refused (exit 1, the API's message); an order id with --operator is a usage error."""
    add_orders(clean_db, alpha.id, [new_payload(i) for i in range(3)])
    shown = _status(live_api, ops.key, "--operator")
    assert shown.exit_code == 0, shown.output
    assert "alpha" in shown.output and alpha.id in shown.output
    assert "upstream: breaker closed" in shown.output
    refused = _status(live_api, alpha.key, "--operator")
    assert refused.exit_code == 1 and "HTTP 403" in refused.output
    usage = _status(live_api, ops.key, "--operator", "ord_" + "0" * 32)
    assert usage.exit_code == 2
    plain = _status(live_api, alpha.key)
    assert plain.exit_code == 0 and "received" in plain.output
