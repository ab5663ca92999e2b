"""Fixtures for the stub tests: one in-thread stub per session, reset before each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from api_stub.testing import StubControl, running_stub

SUBMIT_PATHS = ("/api/partner/order", "/api/order", "/api/admin/order")
PREVIEW_PATHS = ("/api/partner/order/preview", "/api/order/preview")
DEMO_SUB = "sub-00000000000000000000000000000001"


def new_payload(n: int = 1, **extra: Any) -> dict[str, Any]:
    """A valid ``new`` order payload numbered ``n``."""
    payload = {
        "order_type": "new",
        "external_id": f"EXT-{n}",
        "checkoutId": f"basket-{n}",
        "country": "GB",
        "orderItems": [{"offer": {"id": "a" * 40, "version": "b" * 40}, "quantity": 2}],
        "billingDetails": {"firstName": "Ada", "lastName": "Lovelace"},
        "payment": {"type": "zuora", "zuora": {"refId": "r1"}},
    }
    return payload | extra


@pytest.fixture(scope="session")
def stub_base_url() -> Iterator[str]:
    """Base URL of a stub served in a background thread for the whole session."""
    with running_stub() as url:
        yield url


@pytest.fixture
def control(stub_base_url: str) -> Iterator[StubControl]:
    """The stub's control client; the stub is reset to the default config first."""
    with StubControl(stub_base_url) as stub_control:
        stub_control.reset(config={})
        yield stub_control


@pytest.fixture
def client(control: StubControl) -> Iterator[httpx.Client]:
    """A plain HTTP client of the (freshly reset) stub."""
    with httpx.Client(base_url=control.base_url, timeout=5.0) as http:
        yield http


@pytest.fixture
def auth(control: StubControl) -> dict[str, str]:
    """Authorization headers with a valid bearer token."""
    return {"Authorization": f"Bearer {control.token()}"}


@pytest.fixture
def submit(client: httpx.Client, auth: dict[str, str]) -> Callable[..., httpx.Response]:
    """POST an order payload to the partner submit endpoint with a valid token."""

    def post(payload: Any, path: str = SUBMIT_PATHS[0]) -> httpx.Response:
        return client.post(path, json=payload, headers=auth)

    return post
