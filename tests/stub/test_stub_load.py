"""Tests of the stub pushing back: capacity, outage, latency growing with load, the load record."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from api_stub.app import create_app
from api_stub.config import StubConfig
from api_stub.load import LoadGauge, api_latency_s, retry_after_headers
from api_stub.testing import StubControl, running_stub
from tests.helpers import wait_for
from tests.stub.conftest import PREVIEW_PATHS, SUBMIT_PATHS, new_payload

LIST_PATH = "/api/objects/limio/orders"


@pytest.fixture(scope="module")
def stub_base_url() -> Iterator[str]:
    """A stub of this module's own: calls held by other tests' faults would take its slots."""
    with running_stub() as url:
        yield url


@pytest.fixture(autouse=True)
def _idle(control: StubControl) -> None:
    """Start each test with no call in flight (a previous test's call may still be ending)."""
    wait_for(lambda: control.stats()["in_flight"] == 0)
    control.reset_stats()


def concurrent_gets(base_url: str, headers: dict[str, str], n: int) -> list[httpx.Response]:
    """Send ``n`` list calls at once (one connection each); answers in sending order."""

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
            return list(
                await asyncio.gather(*(client.get(LIST_PATH, headers=headers) for _ in range(n)))
            )

    return asyncio.run(run())


def timed_gets(base_url: str, headers: dict[str, str], n: int) -> list[float]:
    """Send ``n`` list calls at once; return how long each took, in seconds."""

    async def one(client: httpx.AsyncClient) -> float:
        started = time.monotonic()
        assert (await client.get(LIST_PATH, headers=headers)).status_code == 200
        return time.monotonic() - started

    async def run() -> list[float]:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
            return list(await asyncio.gather(*(one(client) for _ in range(n))))

    return asyncio.run(run())


def test_calls_beyond_capacity_are_refused_with_429_and_retry_after(
    control: StubControl, auth: dict[str, str]
) -> None:
    """With capacity 2, five calls at once: two served, three refused at once with 429."""
    control.set_capacity(2)
    control.set_latency(1000)
    answers = concurrent_gets(control.base_url, auth, 5)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200, 200, 429, 429, 429]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert all(answer.headers["retry-after"] == "1" for answer in refused)
    assert all(answer.json() == {"message": "Too Many Requests"} for answer in refused)
    # "At once": every refusal was answered before either served call had ended.
    served = [answer for answer in answers if answer.status_code == 200]
    assert max(a.elapsed for a in refused) < min(a.elapsed for a in served)
    stats = control.stats()
    assert (stats["refused"], stats["peak_in_flight"], stats["in_flight"]) == ({"429": 3}, 2, 0)
    assert stats["requests"]["list"] == 5


@pytest.mark.parametrize(
    ("retry_after_s", "header"), [(0.2, "1"), (2.5, "3"), (0, None)], ids=["0.2", "2.5", "0"]
)
def test_over_capacity_can_answer_503_with_a_rounded_up_retry_after(
    control: StubControl,
    client: httpx.Client,
    auth: dict[str, str],
    retry_after_s: float,
    header: str | None,
) -> None:
    """The refusal status is configurable; Retry-After is whole seconds, none for 0."""
    control.set_capacity(1, over_capacity_status=503, retry_after_s=retry_after_s)
    control.set_latency(2000)  # the holder must still hold its slot when the other call comes
    holder = threading.Thread(target=client.get, args=(LIST_PATH,), kwargs={"headers": auth})
    holder.start()
    try:
        wait_for(lambda: control.stats()["in_flight"] == 1)
        with httpx.Client(base_url=control.base_url, timeout=5.0) as other:
            refused = other.post(PREVIEW_PATHS[0], json=new_payload(), headers=auth)
    finally:
        holder.join()
    assert refused.status_code == 503
    assert refused.headers.get("retry-after") == header
    assert control.stats()["refused"] == {"503": 1}


def test_token_endpoint_is_outside_the_capacity(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """With the only /api slot taken, a token is still issued and is not counted in flight."""
    control.set_capacity(1)
    control.set_latency(2000)
    holder = threading.Thread(target=client.get, args=(LIST_PATH,), kwargs={"headers": auth})
    holder.start()
    try:
        wait_for(lambda: control.stats()["in_flight"] == 1)
        assert control.token()
        # Issued while the slot was still taken: the token did not wait for it.
        stats = control.stats()
        assert (stats["in_flight"], stats["peak_in_flight"]) == (1, 1)
    finally:
        holder.join()
    assert control.stats()["refused"] == {}


def test_peak_in_flight_counts_calls_at_once_without_a_capacity(
    control: StubControl, auth: dict[str, str]
) -> None:
    """Six calls held by latency at the same time make a peak of six; all leave afterwards."""
    control.set_latency(800)
    answers = concurrent_gets(control.base_url, auth, 6)
    assert [answer.status_code for answer in answers] == [200] * 6
    stats = control.stats()
    assert (stats["peak_in_flight"], stats["in_flight"], stats["refused"]) == (6, 0, {})


def test_latency_grows_with_the_calls_in_flight(control: StubControl, auth: dict[str, str]) -> None:
    """Base 300 ms plus 200 ms per other call in flight: three at once take 0.3, 0.5, 0.7 s."""
    control.set_latency(300, per_in_flight_ms=200)
    durations = sorted(timed_gets(control.base_url, auth, 3))
    assert durations[2] >= 0.7
    assert durations[1] >= 0.5
    config = StubConfig(latency_ms=300, latency_per_in_flight_ms=200)
    assert [api_latency_s(config, others) for others in (0, 1, 2)] == [0.3, 0.5, 0.7]


def test_outage_answers_502_to_every_api_call_and_creates_nothing(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """During an outage every /api call is a 502 with the documented body; tokens still work."""
    created = client.post(SUBMIT_PATHS[0], json=new_payload(1), headers=auth).json()
    control.script("submit", [{"status": 503}])
    control.set_outage()
    calls = [
        client.post(SUBMIT_PATHS[0], json=new_payload(2), headers=auth),
        client.post(SUBMIT_PATHS[1], json=new_payload(3), headers=auth),
        client.post(PREVIEW_PATHS[0], json=new_payload(4), headers=auth),
        client.get(f"{LIST_PATH}/{created['id']}", headers=auth),
        client.get(LIST_PATH, headers=auth),
    ]
    assert [call.status_code for call in calls] == [502] * 5
    assert all(call.json()["message"].startswith("Bad Gateway") for call in calls)
    fresh = {"Authorization": f"Bearer {control.token()}"}
    assert control.orders()["count"] == 1
    stats = control.stats()
    assert stats["outage_requests"] == {"submit": 2, "preview": 1, "object": 1, "list": 1}
    assert stats["requests"]["submit"] == 3
    control.set_outage(False)
    # The scripted fault was not used up by the outage.
    assert client.post(SUBMIT_PATHS[0], json=new_payload(5), headers=fresh).status_code == 503
    assert client.post(SUBMIT_PATHS[0], json=new_payload(5), headers=fresh).status_code == 200
    assert control.stats()["outage_requests"]["submit"] == 2


def test_a_call_is_in_flight_during_its_latency_even_after_the_client_gave_up(
    control: StubControl, auth: dict[str, str]
) -> None:
    """A client timing out does not free the slot early; the slot is freed when the call ends."""
    control.set_latency(700)
    with (
        httpx.Client(base_url=control.base_url, timeout=0.2) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.get(LIST_PATH, headers=auth)
    assert control.stats()["in_flight"] == 1
    wait_for(lambda: control.stats()["in_flight"] == 0, timeout_s=3.0)
    assert control.stats()["peak_in_flight"] == 1


def test_a_cancelled_call_leaves_the_gauge() -> None:
    """Cancelling a call in its latency sleep (server shutdown) gives its slot back."""
    app = create_app(StubConfig(latency_ms=10_000, capacity=1))
    gauge: LoadGauge = app.state.stub.load

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stub") as client:
            call = asyncio.create_task(client.get(LIST_PATH))
            while gauge.in_flight == 0:
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert gauge.in_flight == 0

    asyncio.run(asyncio.wait_for(run(), timeout=20))


def test_gauge_refuses_beyond_capacity_and_frees_on_errors() -> None:
    """A refused call holds no slot; a call that raises still leaves."""
    gauge = LoadGauge()
    with gauge.admit(1) as first:
        assert first == 0
        with gauge.admit(1) as second:
            assert second is None and gauge.in_flight == 1
    assert gauge.in_flight == 0
    with pytest.raises(RuntimeError), gauge.admit(0) as unlimited:
        assert unlimited == 0
        raise RuntimeError("handler failed")
    assert (gauge.in_flight, gauge.peak) == (0, 1)
    assert retry_after_headers(0.01) == {"Retry-After": "1"}
    assert retry_after_headers(0) is None


def test_stats_reset_zeroes_counters_and_restarts_the_peak(
    control: StubControl, client: httpx.Client, auth: dict[str, str]
) -> None:
    """stats/reset keeps orders and tokens; the new peak starts from the calls in flight."""
    client.post(SUBMIT_PATHS[0], json=new_payload(), headers=auth)
    concurrent_gets(control.base_url, auth, 3)
    control.set_latency(600)
    holder = threading.Thread(target=client.get, args=(LIST_PATH,), kwargs={"headers": auth})
    holder.start()
    try:
        wait_for(lambda: control.stats()["in_flight"] == 1)
        fresh = control.reset_stats()
        assert (fresh["in_flight"], fresh["peak_in_flight"]) == (1, 1)
        assert fresh["requests"] == {} and fresh["orders_created"] == 0
    finally:
        holder.join()
    stats = control.stats()
    assert (stats["in_flight"], stats["peak_in_flight"]) == (0, 1)
    assert control.orders()["count"] == 1
    assert client.get(LIST_PATH, headers=auth).status_code == 200
    control.reset()
    assert control.stats()["peak_in_flight"] == 0
