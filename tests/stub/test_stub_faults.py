"""Tests of the stub's fault injection: scripts, rates, Retry-After, holds, latency."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import httpx
import pytest

from api_stub.config import StubConfig
from api_stub.faults import Fault, FaultScript, ScriptEntry, choose_fault
from api_stub.testing import StubControl
from tests.stub.conftest import PREVIEW_PATHS, new_payload

Submit = Callable[..., httpx.Response]


def test_scripted_502_is_served_exactly_n_times(control: StubControl, submit: Submit) -> None:
    """Three scripted 502s are served to the next three submits, then submits succeed."""
    control.script("submit", [{"status": 502, "times": 3}])
    statuses = [submit(new_payload(n)).status_code for n in range(5)]
    assert statuses == [502, 502, 502, 200, 200]
    assert control.orders()["count"] == 2
    assert control.stats()["faults"] == {"502": 3}


def test_502_body_is_json_with_a_message(control: StubControl, submit: Submit) -> None:
    """A 502 fault answers a JSON ``{"message": ...}`` body."""
    control.script("submit", [{"status": 502}])
    response = submit(new_payload())
    assert response.headers["content-type"] == "application/json"
    assert response.json()["message"]


def test_script_is_per_endpoint_and_any_matches_all(
    control: StubControl, client: httpx.Client, auth: dict[str, str], submit: Submit
) -> None:
    """A submit script leaves previews alone; an ``any`` script hits the next call of any kind."""
    control.script("submit", [{"status": 503}])
    assert client.post(PREVIEW_PATHS[0], json=new_payload(), headers=auth).status_code == 200
    control.script("any", [{"status": 500, "times": 2}])
    assert submit(new_payload()).status_code == 503
    assert client.post(PREVIEW_PATHS[0], json=new_payload(), headers=auth).status_code == 500
    assert client.get("/api/objects/limio/orders", headers=auth).status_code == 500
    assert submit(new_payload()).status_code == 200


def test_token_endpoint_can_be_scripted(control: StubControl, client: httpx.Client) -> None:
    """Token faults come only from scripts, and are served like the others."""
    control.configure(fail_rates={502: 1.0})
    form = {
        "grant_type": "client_credentials",
        "client_id": "demo-client",
        "client_secret": "demo-secret",
    }
    assert client.post("/oauth2/token", data=form).status_code == 200
    control.script("token", [{"status": 503, "retry_after_s": 7}])
    response = client.post("/oauth2/token", data=form)
    assert (response.status_code, response.headers["retry-after"]) == (503, "7")


def test_rates_serve_roughly_the_asked_share(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """With a seed, a 30 % 502 rate fails roughly 30 % of 200 calls."""
    control.configure(fail_rates={502: 0.3}, seed=1234)
    statuses = [
        client.post(PREVIEW_PATHS[0], json=new_payload(), headers=auth).status_code
        for _ in range(200)
    ]
    failures = statuses.count(502)
    assert 40 <= failures <= 80
    assert set(statuses) == {200, 502}
    assert control.stats()["faults"]["502"] == failures


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_sent_on_429_and_503(
    control: StubControl, client: httpx.Client, auth: dict[str, str], status: int
) -> None:
    """Configured Retry-After accompanies rate-served 429 and 503 answers."""
    control.configure(fail_rates={status: 1.0}, retry_after_s=2)
    response = client.post(PREVIEW_PATHS[0], json=new_payload(), headers=auth)
    assert (response.status_code, response.headers.get("retry-after")) == (status, "2")


def test_no_retry_after_on_502(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """A 502 carries no Retry-After even when one is configured."""
    control.configure(fail_rates={502: 1.0}, retry_after_s=2)
    response = client.post(PREVIEW_PATHS[0], json=new_payload(), headers=auth)
    assert response.status_code == 502 and "retry-after" not in response.headers


def test_ambiguous_submit_creates_the_order_but_never_answers(
    control: StubControl, auth: dict[str, str]
) -> None:
    """An ambiguous submit records the order while the client times out waiting."""
    control.configure(ambiguous_hold_s=2.0)
    control.script("submit", [{"kind": "ambiguous"}])
    with (
        httpx.Client(base_url=control.base_url, timeout=0.5) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("/api/partner/order", json=new_payload(7), headers=auth)
    record = control.orders()
    assert record["count"] == 1
    assert (record["orders"][0]["external_id"], record["orders"][0]["ambiguous"]) == ("EXT-7", True)
    assert control.stats()["faults"] == {"ambiguous": 1}


def test_held_request_ends_with_504_after_the_hold(control: StubControl, submit: Submit) -> None:
    """A patient client gets a 504 once the hold time is over."""
    control.script("submit", [{"kind": "ambiguous", "hold_s": 0.2}])
    started = time.monotonic()
    response = submit(new_payload())
    assert response.status_code == 504 and time.monotonic() - started >= 0.2


def test_timeout_fault_creates_nothing(control: StubControl, auth: dict[str, str]) -> None:
    """A ``timeout`` fault holds the call without processing it."""
    control.script("submit", [{"kind": "timeout", "hold_s": 2.0}])
    with (
        httpx.Client(base_url=control.base_url, timeout=0.5) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("/api/partner/order", json=new_payload(), headers=auth)
    assert control.orders()["count"] == 0


def test_ambiguous_rate_applies_to_submits(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """ambiguous_rate holds submits but never previews."""
    control.configure(ambiguous_rate=1.0, ambiguous_hold_s=0.05)
    assert client.post(PREVIEW_PATHS[0], json=new_payload(), headers=auth).status_code == 200
    assert client.post("/api/partner/order", json=new_payload(), headers=auth).status_code == 504
    assert control.orders()["orders"][0]["ambiguous"] is True


def test_latency_is_added_to_api_calls(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """latency_ms delays every /api answer."""
    control.configure(latency_ms=200)
    started = time.monotonic()
    assert client.get("/api/objects/limio/orders", headers=auth).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_choose_fault_prefers_script_over_rates() -> None:
    """Scripted faults beat rates; rates never apply to the token endpoint."""
    config = StubConfig(fail_rates={503: 1.0})
    script = FaultScript()
    script.add("preview", [(Fault("status", 429), 1)], replace=False)
    rng = random.Random(0)
    assert choose_fault(config, script, rng, "preview") == Fault("status", 429)
    assert choose_fault(config, script, rng, "preview") == Fault("status", 503)
    assert choose_fault(config, script, rng, "token") is None
    assert script.pending() == {}


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"kind": "status"},
        {"kind": "timeout", "status": 502},
        {"status": 200},
        {"status": 502, "times": 0},
    ],
)
def test_invalid_script_entries_are_refused(entry: dict[str, object]) -> None:
    """A script entry needs a status xor a non-status kind, and times >= 1."""
    with pytest.raises(ValueError):
        ScriptEntry.model_validate(entry)


def test_invalid_script_gets_400(control: StubControl) -> None:
    """The control API refuses a malformed script with a 400 naming the field."""
    response = httpx.post(
        f"{control.base_url}/_stub/script", json={"endpoint": "nowhere", "faults": []}
    )
    assert response.status_code == 400
    assert "endpoint" in response.json()["message"]
