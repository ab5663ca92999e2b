"""Tests of the upstreams that broke us: jitter, latency changed while running, an outage on
every path, refused connections, a missing order list, capacity by slowing down, and the
counters a benchmark reads."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from api_stub.__main__ import _parser, config_from_args
from api_stub.app import create_app
from api_stub.config import StubConfig
from api_stub.front import endpoint_of
from api_stub.load import LoadGauge, jitter_factor
from api_stub.testing import StubControl, running_stub
from tests.helpers import wait_for
from tests.stub.conftest import PREVIEW_PATHS, SUBMIT_PATHS, new_payload

LIST_PATH = "/api/objects/limio/orders"


@pytest.fixture(scope="module")
def stub_base_url() -> Iterator[str]:
    """A stub of this module's own: its public port is closed and reopened here."""
    with running_stub() as url:
        yield url


@pytest.fixture(autouse=True)
def _idle(control: StubControl) -> None:
    """Start each test with no call in flight and fresh counters."""
    wait_for(lambda: control.stats()["in_flight"] == 0)
    control.reset_stats()


def timed_gets(base_url: str, headers: dict[str, str], n: int) -> list[tuple[int, float]]:
    """Send ``n`` list calls at once; return (status, seconds) of each, in sending order."""

    async def one(client: httpx.AsyncClient) -> tuple[int, float]:
        started = time.monotonic()
        status = (await client.get(LIST_PATH, headers=headers)).status_code
        return status, time.monotonic() - started

    async def run() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
            return list(await asyncio.gather(*(one(client) for _ in range(n))))

    return asyncio.run(run())


def timed_get(client: httpx.Client, headers: dict[str, str]) -> float:
    started = time.monotonic()
    assert client.get(LIST_PATH, headers=headers).status_code == 200
    return time.monotonic() - started


def test_jitter_is_log_normal_around_the_median() -> None:
    """Sigma 0.5: the median factor is 1 and about 8 % of calls take more than twice it."""
    rng = random.Random(7)
    draws = [jitter_factor(0.5, rng) for _ in range(20_000)]
    assert statistics.median(draws) == pytest.approx(1.0, abs=0.03)
    # P(exp(N(0, 0.5)) > 2) = P(Z > ln 2 / 0.5) = 0.083.
    assert sum(d > 2 for d in draws) / len(draws) == pytest.approx(0.083, abs=0.01)
    assert min(draws) > 0
    assert jitter_factor(0.0, rng) == 1.0


def test_jittered_calls_spread_and_plain_ones_do_not(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """At 30 ms with sigma 1, call times spread far beyond the sub-millisecond noise."""
    control.set_latency(30, jitter_sigma=1.0)
    spread = sorted(timed_get(client, auth) for _ in range(20))
    assert spread[-1] - spread[0] > 0.04
    assert control.config()["jitter_sigma"] == 1.0
    control.set_latency(30, jitter_sigma=0)
    plain = sorted(timed_get(client, auth) for _ in range(10))
    # At least the latency (less 1 ms: the stub's asyncio timer fired 20 us early once in CI).
    assert plain[0] >= 0.029 and plain[-1] - plain[0] < 0.04


def test_latency_changed_while_running_applies_to_the_next_call(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """0 ms, then 400 ms, then 0 ms: each next call takes the latency just set."""
    assert timed_get(client, auth) < 0.2
    control.set_latency(400)
    assert timed_get(client, auth) >= 0.4
    control.set_latency(0)
    assert timed_get(client, auth) < 0.2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", SUBMIT_PATHS[0]),
        ("POST", PREVIEW_PATHS[1]),
        ("GET", LIST_PATH),
        ("GET", f"{LIST_PATH}/order-0"),
        ("GET", "/api/objects/limio/customers"),
        ("DELETE", "/api/order"),
        ("GET", "/nowhere"),
    ],
)
def test_the_outage_answers_502_on_every_path(
    control: StubControl, client: httpx.Client, auth: dict[str, str], method: str, path: str
) -> None:
    """Known paths, unknown paths and wrong methods all answer 502 during the outage."""
    before = client.request(method, path, headers=auth, json=new_payload(1))
    control.set_outage()
    answer = client.request(method, path, headers=auth, json=new_payload(2))
    assert answer.status_code == 502
    assert answer.json()["message"].startswith("Bad Gateway")
    control.set_outage(False)
    assert client.request(method, path, headers=auth, json=new_payload(3)).status_code == (
        before.status_code
    )
    assert control.orders()["count"] == (2 if method == "POST" and "preview" not in path else 0)


def test_the_outage_records_its_window_and_the_time_of_each_call(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """Calls answered by the outage carry timestamps inside its window; tokens still work."""
    control.set_outage()
    started = time.time()
    for _ in range(3):
        client.get(LIST_PATH, headers=auth)
    client.get("/api/unknown", headers=auth)
    assert control.token()
    control.set_outage(False)
    stats = control.stats()
    (window,) = stats["outage"]["windows"]
    assert window["mode"] == "502" and window["started_at"] <= started <= window["ended_at"]
    calls_at = stats["outage"]["calls_at"]
    assert len(calls_at) == stats["outage"]["calls"] == 4
    assert all(window["started_at"] <= t <= window["ended_at"] for t in calls_at)
    assert stats["outage_requests"] == {"list": 3, "other": 1}
    assert stats["responses"]["list"] == {"502": 3}
    assert set(stats["responses"]["token"]) == {"200"}  # tokens still issued


def test_the_outage_can_cover_the_token_endpoint(
    control: StubControl, client: httpx.Client
) -> None:
    """With ``outage_token`` the token endpoint answers 502 too."""
    control.configure(outage=True, outage_token=True)
    with pytest.raises(httpx.HTTPStatusError) as info:
        control.token()
    assert info.value.response.status_code == 502


def test_an_outage_can_begin_after_some_calls_and_end_by_itself(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """Armed for the 3rd call and 0.5 s: calls 1-2 pass, 3 fails, then it ends on its own."""
    control.outage("502", after_calls=3, for_s=0.5)
    statuses = [client.get(LIST_PATH, headers=auth).status_code for _ in range(3)]
    assert statuses == [200, 200, 502]
    wait_for(lambda: client.get(LIST_PATH, headers=auth).status_code == 200, timeout_s=3)
    (window,) = control.stats()["outage"]["windows"]
    assert 0.45 <= window["ended_at"] - window["started_at"] < 1.5
    assert control.config()["outage"] is False


def test_refused_connections_keep_the_control_port_open(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """The public port refuses new connections and drops open ones; control still answers."""
    assert client.get(LIST_PATH, headers=auth).status_code == 200  # a kept-alive connection
    assert control.control_url != control.base_url
    control.set_outage(mode="refuse")
    assert control.listeners()["public"]["open"] is False
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{control.base_url}{LIST_PATH}", headers=auth, timeout=2)
    with pytest.raises(httpx.TransportError):
        client.get(LIST_PATH, headers=auth)
    stats = control.stats()
    assert stats["outage"]["mode"] == "refuse" and stats["connections_aborted"] >= 1
    control.set_outage(False)
    assert httpx.get(f"{control.base_url}{LIST_PATH}", headers=auth).status_code == 200
    assert control.stats()["outage"]["windows"][0]["ended_at"] is not None


def test_refusing_for_a_time_reopens_the_same_port(
    control: StubControl, auth: dict[str, str]
) -> None:
    """``POST /_stub/outage {"mode": "refuse", "for_s": 0.5}`` reopens the port by itself."""
    control.outage("refuse", for_s=0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{control.base_url}{LIST_PATH}", headers=auth, timeout=2)

    def served() -> bool:
        try:
            return httpx.get(f"{control.base_url}{LIST_PATH}", headers=auth).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(served, timeout_s=3)
    assert control.listeners()["public"]["open"] is True


def test_refusing_needs_a_control_port() -> None:
    """A stub without a control port answers 400 naming the field, and keeps serving."""
    app = create_app(StubConfig())

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stub") as client:
            answer = await client.put("/_stub/config", json={"refuse_connections": True})
            assert answer.status_code == 400
            assert answer.json()["errors"][0]["field"] == "refuse_connections"
            config = (await client.get("/_stub/config")).json()
            assert config["refuse_connections"] is False
            outage = await client.post("/_stub/outage", json={"mode": "refuse"})
            assert outage.status_code == 400
            bad = await client.post("/_stub/outage", json={"mode": "down"})
            assert bad.status_code == 400 and "mode" in bad.json()["message"]

    asyncio.run(run())


def test_the_order_list_can_be_absent_while_get_by_id_works(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """With the list off it answers 404 "Not found."; an order is still read by its id."""
    created = client.post(SUBMIT_PATHS[0], json=new_payload(1), headers=auth).json()
    control.set_order_list(False)
    absent = client.get(LIST_PATH, headers=auth, params={"limit": 5})
    assert absent.status_code == 404 and absent.json() == {"message": "Not found."}
    assert client.get(f"{LIST_PATH}/{created['id']}", headers=auth).status_code == 200
    control.set_order_list(True)
    assert client.get(LIST_PATH, headers=auth).json()["totalSize"] == 1
    assert control.stats()["responses"]["list"] == {"404": 1, "200": 1}


def test_capacity_by_slowing_down_queues_and_refuses_nothing(
    control: StubControl, auth: dict[str, str]
) -> None:
    """Capacity 2 in queue mode, 300 ms: four calls at once all succeed, two of them after 0.6 s."""
    control.set_capacity(2, mode="queue")
    control.set_latency(300)
    answers = timed_gets(control.base_url, auth, 4)
    assert [status for status, _ in answers] == [200] * 4
    durations = sorted(seconds for _, seconds in answers)
    assert durations[1] < 0.55 and durations[2] >= 0.6
    stats = control.stats()
    assert stats["refused"] == {}
    assert (stats["peak_in_flight"], stats["peak_queued"], stats["in_flight"]) == (4, 2, 0)


def test_mean_in_flight_is_weighted_by_time(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """One call in flight for 0.4 s of a ~0.8 s window: a mean near 0.5."""
    control.set_latency(400)
    control.reset_stats()
    client.get(LIST_PATH, headers=auth)
    since = control.stats()["since"]
    wait_for(lambda: time.time() - since >= 0.8)
    mean = control.stats()["mean_in_flight"]
    assert 0.3 <= mean <= 0.6


def test_a_cancelled_waiter_leaves_the_queue_and_the_slot_passes_on() -> None:
    """A queued call cancelled while waiting frees nothing it never held; the next one runs."""
    gauge = LoadGauge()

    async def run() -> None:
        release = asyncio.Event()

        async def holder() -> None:
            async with gauge.queue(1):
                await release.wait()

        async def waiter(entered: list[int]) -> None:
            async with gauge.queue(1) as others:
                entered.append(others)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(waiter([]))
        entered: list[int] = []
        patient = asyncio.create_task(waiter(entered))
        await asyncio.sleep(0.01)
        assert (gauge.in_flight, gauge.serving, gauge.queued) == (3, 1, 2)
        cancelled.cancel()
        await asyncio.sleep(0.01)
        assert (gauge.in_flight, gauge.queued) == (2, 1)
        release.set()
        await asyncio.gather(first, patient)
        assert entered == [0]
        assert (gauge.in_flight, gauge.serving, gauge.queued) == (0, 0, 0)

    asyncio.run(asyncio.wait_for(run(), timeout=5))


def test_endpoint_labels() -> None:
    """Paths map to the counter labels the stats use; anything else is ``other``."""
    assert [
        endpoint_of(p)
        for p in (
            "/oauth2/token",
            "/api/order/preview",
            "/api/admin/order",
            "/api/objects/limio/orders",
            "/api/objects/limio/orders/order-1",
            "/api/objects/limio/orders/order-1/x",
            "/api/nope",
        )
    ] == ["token", "preview", "submit", "list", "object", "other", "other"]


def test_new_options_from_command_line_and_env() -> None:
    """Jitter, capacity mode, the order list and the token outage reach the config."""
    args = _parser().parse_args(
        [
            "--jitter-sigma",
            "0.5",
            "--capacity-mode",
            "queue",
            "--no-order-list",
            "--outage-token",
            "--control-port",
            "9001",
        ]
    )
    config = config_from_args(args, StubConfig())
    assert (config.jitter_sigma, config.capacity_mode) == (0.5, "queue")
    assert (config.order_list, config.outage_token, args.control_port) == (False, True, 9001)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--capacity-mode", "drop"])
    env = StubConfig.from_env({"STUB_JITTER_SIGMA": "0.3", "STUB_ORDER_LIST": "false"})
    assert (env.jitter_sigma, env.order_list) == (0.3, False)
    default = StubConfig()
    assert (default.jitter_sigma, default.capacity_mode, default.order_list) == (0, "refuse", True)
    assert (default.outage_token, default.refuse_connections) == (False, False)
