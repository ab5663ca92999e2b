"""The intake app over HTTP (TestClient) against the real database and Redis of the session.

``api`` builds an app for the test environment (overrides: ``api(max_batch_items=5)``);
``alpha`` and ``beta`` are two callers with their ``Authorization`` headers.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import settings_from
from worker.api import create_app
from worker.db import transaction
from worker.intake.callers import Role, create_caller
from worker.models import Base

NEW_ORDER: dict[str, Any] = {
    "order_type": "new",
    "external_id": "ext-1",
    "orderItems": [{"offer": {"id": "a" * 40, "version": "b" * 40}, "quantity": 1}],
    "billingDetails": {"firstName": "Ada", "lastName": "Lovelace", "country": "GB"},
    "payment": {"type": "zuora"},
    "checkoutId": "basket-1",
    "country": "GB",
}


def order(external_id: str | None = "ext-1", **overrides: Any) -> dict[str, Any]:
    """A valid ``new`` order payload (no ``external_id`` key when it is None)."""
    payload = copy.deepcopy(NEW_ORDER)
    payload.update(overrides)
    if external_id is None:
        payload.pop("external_id")
    else:
        payload["external_id"] = external_id
    return payload


@dataclass(frozen=True)
class CallerKey:
    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_caller(db_url: str, name: str, role: Role = "caller") -> CallerKey:
    """A new caller (or operator) named ``name``, with its key."""
    with transaction(db_url) as session:
        caller, key = create_caller(session, name, role=role)
    return CallerKey(caller.id, key)


@pytest.fixture
def alpha(clean_db: str) -> CallerKey:
    return make_caller(clean_db, "alpha")


@pytest.fixture
def beta(clean_db: str) -> CallerKey:
    return make_caller(clean_db, "beta")


@pytest.fixture
def api(env: dict[str, str]) -> Iterator[Callable[..., TestClient]]:
    """A factory of started TestClients for apps built with settings overrides."""
    clients: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        client = TestClient(create_app(settings_from(env, **overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(api: Callable[..., TestClient]) -> TestClient:
    return api()


def row_counts(db_url: str) -> dict[str, int]:
    """Rows per table, callers excluded."""
    with transaction(db_url) as session:
        return {
            t.name: session.scalar(select(func.count()).select_from(t)) or 0
            for t in Base.metadata.sorted_tables
            if t.name != "callers"
        }


def queued(redis_client: redis.Redis, queue: str = "orders") -> list[dict[str, Any]]:
    """The Celery messages waiting in ``queue``: ``{"task", "args"}`` each, oldest first."""
    out = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "args": args})
    return out


def queued_ids(redis_client: redis.Redis) -> list[str]:
    """Every order id enqueued for processing."""
    return [i for m in queued(redis_client) for i in m["args"][0]]
