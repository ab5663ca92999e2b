"""Fixtures for driving the pipeline in-process against the stub, a real DB and real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api_stub.config import StubConfig
from api_stub.testing import StubControl, running_stub
from tests.conftest import settings_from
from tests.helpers import add_orders, new_payload  # noqa: F401
from worker.db import transaction
from worker.models import Order
from worker.queue.runtime import Runtime, build_runtime
from worker.repository import load
from worker.settings import Settings
from worker.states import TERMINAL


@pytest.fixture
def stub_url() -> Iterator[str]:
    with running_stub(StubConfig(seed=7, complete_after_s=0.2)) as url:
        yield url


@pytest.fixture
def stub(stub_url: str) -> Iterator[StubControl]:
    with StubControl(stub_url) as control:
        yield control


@pytest.fixture
def make_settings(env: dict[str, str], stub_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        defaults: dict[str, Any] = {
            "upstream_url": stub_url,
            "retry_base_s": 0.01,
            "retry_cap_s": 0.05,
            "follow_interval_s": 0.1,
            "reconcile_delay_s": 0.0,
            "upstream_read_timeout_s": 2.0,
            "http_concurrency": 8,
        }
        defaults.update(overrides)
        return settings_from(env, **defaults)

    return make


@pytest.fixture
def runtime_factory(
    make_settings: Callable[..., Settings], redis_url: str
) -> Iterator[Callable[..., Runtime]]:
    made: list[Runtime] = []

    def factory(**overrides: Any) -> Runtime:
        rt = build_runtime(make_settings(**overrides), redis_url)
        made.append(rt)
        return rt

    yield factory
    for rt in made:
        rt.close()


def drive(rt: Runtime, ids: list[str], timeout_s: float = 20.0) -> dict[str, Order]:
    """Run the pipeline over ``ids`` until every order is terminal or held; return them."""
    deadline = time.monotonic() + timeout_s
    while True:
        with transaction(rt.settings.database_url) as session:
            orders = {o.id: o for o in load(session, ids)}
        pending = [
            i
            for i, o in orders.items()
            if o.status not in TERMINAL and not (o.status == "submit_unknown" and o.due_at is None)
        ]
        if not pending or time.monotonic() > deadline:
            return orders
        rt.pipeline.run(pending)
        time.sleep(0.02)
