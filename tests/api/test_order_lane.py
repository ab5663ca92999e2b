"""The polling lane (``worker/api/order_lane.py``): ordinary polls of the order view answered
below the framework, byte for byte what the route answers; everything else left to the route."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import CallerKey, make_caller, order
from worker.api import order_lane
from worker.api.auth import Authenticator
from worker.api.lane_reads import CONNECT_TIMEOUT_S, PgViews, conninfo


class Spy:
    """Counts the lane's reads (the route reads through its own code)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = order_lane.LaneReads.view_bytes

        async def counted(reads: order_lane.LaneReads, *args: Any) -> bytes | None:
            self.calls += 1
            return await real(reads, *args)

        monkeypatch.setattr(order_lane.LaneReads, "view_bytes", counted)


def forget_keys(client: TestClient) -> None:
    """Empty the key cache: the next request is authenticated by the route."""
    authenticator: Authenticator = client.app.state.authenticator  # type: ignore[attr-defined]
    authenticator._cache.clear()


WIRE_HEADERS = ("etag", "cache-control", "content-type", "content-length")


def new_order_url(client: TestClient, caller: CallerKey) -> str:
    """The view URL of a new order of ``caller`` (whose key is trusted from then on)."""
    created = client.post("/v1/orders", json=order(), headers=caller.headers).json()
    return f"/v1/orders/{created['id']}"


def test_a_poll_with_a_trusted_key_is_answered_by_the_lane_as_the_route_would(
    client: TestClient, alpha: CallerKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = new_order_url(client, alpha)
    spy = Spy(monkeypatch)
    forget_keys(client)
    by_route = client.get(url, headers=alpha.headers)
    assert spy.calls == 0  # the key was not trusted yet: the route looked it up
    by_lane = client.get(url, headers=alpha.headers)
    assert spy.calls == 1
    assert (by_lane.status_code, by_lane.content) == (200, by_route.content)
    assert {h: by_lane.headers.get(h) for h in WIRE_HEADERS} == {
        h: by_route.headers.get(h) for h in WIRE_HEADERS
    }
    unchanged = client.get(url, headers={**alpha.headers, "If-None-Match": by_lane.headers["etag"]})
    assert spy.calls == 2
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["etag"] == by_route.headers["etag"]
    assert unchanged.headers["cache-control"] == "no-store"


def test_the_lane_counts_its_polls_in_the_request_metrics(
    client: TestClient, alpha: CallerKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = new_order_url(client, alpha)
    spy = Spy(monkeypatch)
    requests = client.app.state.metrics.requests  # type: ignore[attr-defined]
    counted = requests.labels("GET", "/v1/orders/{order_id}", "200")
    before = counted._value.get()
    for _ in range(3):
        assert client.get(url, headers=alpha.headers).status_code == 200
    assert spy.calls == 3
    assert counted._value.get() == before + 3


def test_what_the_lane_does_not_answer_gets_the_routes_answer(
    client: TestClient, alpha: CallerKey, beta: CallerKey, clean_db: str
) -> None:
    """Another caller's order (404), an unknown key (401), an operator key (401), a
    malformed id (404), a NUL in the query (400): the API's own error answers."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()
    client.post("/v1/orders", json=order(), headers=beta.headers)  # beta's key is trusted now
    url = f"/v1/orders/{created['id']}"
    foreign = client.get(url, headers=beta.headers)
    assert foreign.status_code == 404 and "message" in foreign.json()
    unknown = client.get(url, headers={"Authorization": "Bearer ok_nobody"})
    assert unknown.status_code == 401
    operator = make_caller(clean_db, "ops", role="operator")
    client.get("/metrics", headers=operator.headers)  # the operator's key is trusted now
    assert client.get(url, headers=operator.headers).status_code == 401
    assert client.get(url + "x", headers=alpha.headers).status_code == 404
    assert client.get(url + "?a=%00", headers=alpha.headers).status_code == 400


def test_a_read_that_fails_in_the_lane_is_left_to_the_route(
    client: TestClient, alpha: CallerKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane never answers an error: the route answers (here the route's read works)."""
    created = client.post("/v1/orders", json=order(), headers=alpha.headers).json()

    async def broken(*_: Any) -> bytes | None:
        raise OSError("connection reset")

    monkeypatch.setattr(order_lane.LaneReads, "view_bytes", broken)
    answer = client.get(f"/v1/orders/{created['id']}", headers=alpha.headers)
    assert answer.status_code == 200
    assert answer.json()["id"] == created["id"]


def test_the_postgres_read_fails_fast_and_frees_its_slot_when_the_database_is_gone() -> None:
    """Nothing listens on port 1: the read raises within the connect timeout (the lane then
    hands the poll to the route) and no connection slot stays taken: more failures than
    slots still fail on the connect, never on waiting for a slot."""
    uri = conninfo("postgresql+psycopg://root@127.0.0.1:1/gone")
    assert uri is not None
    views = PgViews(uri, 2)
    started = time.monotonic()
    for _ in range(5):
        with pytest.raises(psycopg.OperationalError):
            asyncio.run(views.view_bytes("cal_x", "ord_x"))
    assert time.monotonic() - started < 5 * (CONNECT_TIMEOUT_S + 1)


def test_a_cancelled_poll_gives_its_connection_slot_back() -> None:
    """A poll cancelled while its connection hangs (a server that accepts and never answers)
    leaves every slot free: a lane whose slots leaked would wait for ever."""

    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        views = PgViews(f"postgresql://root@127.0.0.1:{port}/x", size=2)
        for _ in range(3):
            task = asyncio.create_task(views.view_bytes("cal_x", "ord_x"))
            await asyncio.sleep(0.1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert not views._slots.locked()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_only_postgresql_urls_get_the_event_loop_reads(tmp_path: Any) -> None:
    assert conninfo(f"sqlite:///{tmp_path}/x.db") is None
    assert conninfo("postgresql+psycopg://u:p@h:5433/d?sslmode=require") == (
        "postgresql://u:p@h:5433/d?sslmode=require"
    )
