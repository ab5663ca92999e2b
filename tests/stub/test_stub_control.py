"""Tests of the stub's control API, configuration sources and process runner."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from api_stub.__main__ import _parser, config_from_args
from api_stub.config import DEMO_SUBSCRIPTIONS, StubConfig
from api_stub.testing import StubControl, stub_process
from tests.stub.conftest import new_payload

Submit = Callable[..., httpx.Response]


def test_duplicates_are_reported_by_external_id(control: StubControl, submit: Submit) -> None:
    """Orders sharing an external_id show up in ``duplicates`` with their count."""
    for n in (1, 1, 1, 2, 3, 3):
        assert submit(new_payload(n)).status_code == 200
    submit(new_payload(9) | {"external_id": None})
    record = control.orders()
    assert record["count"] == 7
    assert record["duplicates"] == {"EXT-1": 3, "EXT-3": 2}


def test_stats_count_requests_tokens_and_rejections(
    control: StubControl, client: httpx.Client, submit: Submit
) -> None:
    """Stats count tokens issued, requests per endpoint, 401s and 400/404 rejections."""
    submit(new_payload())
    submit({"order_type": "new"})
    submit({"order_type": "change_offer", "subscriptionId": "sub-nope"})
    client.get("/api/objects/limio/orders/x")
    stats = control.stats()
    assert stats["tokens_issued"] == 1 and stats["tokens_active"] == 1
    assert stats["requests"] == {"token": 1, "submit": 3, "object": 1}
    assert (stats["unauthorized"], stats["orders_created"]) == (1, 1)
    assert stats["rejected"] == {"400": 1, "404": 1, "502": 0}


def test_expire_tokens_makes_every_token_fail(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """After ``tokens/expire`` an earlier token is refused; a new one works."""
    assert control.expire_tokens() == 1
    assert client.get("/api/objects/limio/orders", headers=auth).status_code == 401
    fresh = {"Authorization": f"Bearer {control.token()}"}
    assert client.get("/api/objects/limio/orders", headers=fresh).status_code == 200


def test_reset_clears_state_but_keeps_config(
    control: StubControl, client: httpx.Client, auth: dict[str, str], submit: Submit
) -> None:
    """Reset forgets orders, tokens, script and counters, and keeps the config unless given."""
    control.configure(latency_ms=1.0)
    created = submit(new_payload()).json()
    control.script("submit", [{"status": 502, "times": 5}])
    control.reset()
    assert control.orders() == {"count": 0, "orders": [], "duplicates": {}}
    assert client.get("/api/objects/limio/orders", headers=auth).status_code == 401
    assert control.stats()["requests"] == {"list": 1}
    assert httpx.get(f"{control.base_url}/_stub/script").json() == {"pending": {}}
    assert control.config()["latency_ms"] == 1.0
    fresh = {"Authorization": f"Bearer {control.token()}"}
    assert (
        client.get(f"/api/objects/limio/orders/{created['id']}", headers=fresh).status_code == 404
    )
    control.reset(config={"token_ttl_s": 5})
    assert (control.config()["latency_ms"], control.config()["token_ttl_s"]) == (0.0, 5.0)


def test_configure_is_partial_and_validated(control: StubControl) -> None:
    """PUT /_stub/config changes only the given fields and refuses invalid values."""
    assert control.configure(payload_errors=502)["payload_errors"] == "502"
    config = control.configure(fail_rates={502: 0.1}, retry_after_s=3, payload_errors="400")
    assert (config["fail_rates"], config["retry_after_s"], config["token_ttl_s"]) == (
        {"502": 0.1},
        3,
        3600.0,
    )
    for bad in (
        {"fail_rates": {502: 0.8, 503: 0.5}},
        {"fail_rates": {200: 0.1}},
        {"latency_ms": -1},
        {"nope": 1},
        {"payload_errors": "404"},
    ):
        with pytest.raises(httpx.HTTPStatusError) as info:
            control.configure(**bad)
        assert info.value.response.status_code == 400
    assert control.config()["fail_rates"] == {"502": 0.1}


def test_seed_makes_ids_reproducible(control: StubControl, client: httpx.Client) -> None:
    """The same seed gives the same tokens and order ids after a reset."""

    def first_order_id() -> str:
        headers = {"Authorization": f"Bearer {control.token()}"}
        return str(client.post("/api/order", json=new_payload(), headers=headers).json()["id"])

    control.reset(config={"seed": 42})
    first = first_order_id()
    control.reset()
    assert first_order_id() == first


def test_config_from_env() -> None:
    """STUB_* variables set the config, JSON or CSV where the field is structured."""
    config = StubConfig.from_env(
        {
            "STUB_LATENCY_MS": "20",
            "STUB_TOKEN_TTL_S": "1.5",
            "STUB_FAIL_RATES": '{"502": 0.1, "429": 0.05}',
            "STUB_SUBSCRIPTIONS": "sub-a, sub-b",
            "STUB_RETRY_AFTER_S": "none",
            "STUB_PAYLOAD_ERRORS": "502",
            "OTHER": "x",
        }
    )
    assert (config.latency_ms, config.token_ttl_s, config.retry_after_s) == (20.0, 1.5, None)
    assert (config.fail_rates, config.subscriptions) == ({502: 0.1, 429: 0.05}, ["sub-a", "sub-b"])
    assert config.payload_errors == "502"
    assert StubConfig.from_env({}).subscriptions == list(DEMO_SUBSCRIPTIONS)
    assert StubConfig.from_env({}).payload_errors == "400"


def test_config_from_command_line() -> None:
    """Command-line options override the base config field by field."""
    args = _parser().parse_args(
        ["--port", "9", "--latency-ms", "5", "--fail-rate-502", "0.2", "--token-ttl-s", "2"]
    )
    config = config_from_args(args, StubConfig(fail_rates={503: 0.1}, complete_after_s=1))
    assert (config.latency_ms, config.token_ttl_s, config.complete_after_s) == (5.0, 2.0, 1.0)
    assert config.fail_rates == {503: 0.1, 502: 0.2}
    args = _parser().parse_args(["--payload-errors", "502"])
    assert config_from_args(args, StubConfig()).payload_errors == "502"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--payload-errors", "404"])


def test_load_options_from_command_line_and_env() -> None:
    """Capacity, refusal, outage and load-latency options reach the config from both sources."""
    args = _parser().parse_args(
        [
            "--capacity",
            "3",
            "--over-capacity-status",
            "503",
            "--capacity-retry-after-s",
            "0.5",
            "--latency-per-in-flight-ms",
            "5",
            "--outage",
        ]
    )
    config = config_from_args(args, StubConfig())
    assert (config.capacity, config.over_capacity_status, config.capacity_retry_after_s) == (
        3,
        503,
        0.5,
    )
    assert (config.latency_per_in_flight_ms, config.outage) == (5.0, True)
    assert config_from_args(_parser().parse_args([]), StubConfig(outage=True)).outage is True
    with pytest.raises(SystemExit):
        _parser().parse_args(["--over-capacity-status", "500"])
    env = StubConfig.from_env(
        {"STUB_CAPACITY": "4", "STUB_OVER_CAPACITY_STATUS": "503", "STUB_OUTAGE": "true"}
    )
    assert (env.capacity, env.over_capacity_status, env.outage) == (4, 503, True)
    default = StubConfig()
    assert (default.capacity, default.over_capacity_status, default.outage) == (0, 429, False)
    assert (default.capacity_retry_after_s, default.latency_per_in_flight_ms) == (1.0, 0.0)


def test_stub_process_serves_and_stops() -> None:
    """``stub_process`` runs ``python -m api_stub`` with options and stops it at exit."""
    options = ["--token-ttl-s", "2", "--capacity", "5", "--payload-errors", "502"]
    with stub_process(options) as base_url, StubControl(base_url) as control:
        config = control.config()
        assert (config["token_ttl_s"], config["capacity"], config["payload_errors"]) == (
            2.0,
            5,
            "502",
        )
        pid = control.stats()["process"]["pid"]
        assert control.token()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/_stub/config", timeout=1.0)
    assert pid
