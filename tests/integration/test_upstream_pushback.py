"""An upstream that pushes back, against real worker processes: capacity, outage, slow calls."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from tests.conftest import settings_from
from tests.helpers import new_payload
from worker.db import transaction
from worker.flow.setup import build_store
from worker.models import OrderEvent
from worker.redis_client import redis_client

pytestmark = pytest.mark.slow


def _api_calls(stats: dict) -> int:  # type: ignore[type-arg]
    return sum(n for endpoint, n in stats["requests"].items() if endpoint != "token")


def _breaker(cluster) -> str:  # type: ignore[no-untyped-def]
    """The fleet's breaker mode, as the workers share it in Redis."""
    settings = settings_from({k: v for k, v in cluster.env.items() if k.startswith("ORDERS_")})
    store = build_store(settings, redis_client(cluster.env["ORDERS_REDIS_URL"]))
    return str(store.read().breaker.mode)


def _reasons(cluster, ids) -> dict[str, set[str | None]]:  # type: ignore[no-untyped-def]
    with transaction(cluster.db_url) as session:
        rows = session.execute(
            select(OrderEvent.order_id, OrderEvent.reason).where(OrderEvent.order_id.in_(ids))
        ).all()
    out: dict[str, set[str | None]] = {}
    for oid, reason in rows:
        out.setdefault(oid, set()).add(reason)
    return out


def test_the_ceiling_holds_against_a_capacity(cluster, caller_id):
    """Capacity 6, ceiling 6, two worker processes of 64 calls: never more than 6 in flight."""
    cluster.env["ORDERS_UPSTREAM_MAX_IN_FLIGHT"] = "6"
    cluster.stub.configure(latency_ms=20)
    cluster.stub.set_capacity(6)
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(200)])
    orders = cluster.wait_settled(ids, timeout_s=60)
    assert {o.status for o in orders.values()} == {"complete"}
    stats = cluster.stub.stats()
    assert stats["peak_in_flight"] <= 6
    assert sum(stats["refused"].values()) == 0


def test_without_a_ceiling_the_limit_is_learned(cluster, caller_id):
    """Capacity 6 and no ceiling: every order completes and few calls are refused."""
    cluster.stub.configure(latency_ms=20)
    cluster.stub.set_capacity(6, retry_after_s=0)
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(300)])
    orders = cluster.wait_settled(ids, timeout_s=60)
    assert {o.status for o in orders.values()} == {"complete"}
    stats = cluster.stub.stats()
    refused = sum(stats["refused"].values())
    # The slow start's first burst (32 wanted, 6 served) is most of it.
    assert refused <= 0.1 * _api_calls(stats), (refused, _api_calls(stats))
    assert max(o.failures for o in orders.values()) == 0


def test_an_outage_fails_no_order_and_only_probes_reach_it(cluster, caller_id):
    """An outage for everyone mid-run: once the breaker opens, about one call a second reaches
    the upstream (ten calls take about ten seconds), and no order fails."""
    cluster.stub.configure(latency_ms=20)
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(400)])
    cluster.wait_for(lambda: cluster.counts().get("complete", 0) >= 100, timeout_s=30)
    cluster.stub.set_outage(True)
    cluster.wait_for(lambda: _breaker(cluster) == "open", timeout_s=15)
    cluster.wait_for(lambda: cluster.stub.stats()["in_flight"] == 0, timeout_s=15)
    before = _api_calls(cluster.stub.stats())
    started = time.monotonic()
    cluster.wait_for(lambda: _api_calls(cluster.stub.stats()) - before >= 10, timeout_s=40)
    elapsed_s = time.monotonic() - started
    during = _api_calls(cluster.stub.stats()) - before
    cluster.stub.set_outage(False)
    orders = cluster.wait_settled(ids, timeout_s=60)
    assert {o.status for o in orders.values()} == {"complete"}
    # One probe a second fleet-wide (+ slack for the probe boundaries); without the breaker
    # the ten calls would take a fraction of a second.
    assert during <= elapsed_s * 1.2 + 2, (during, elapsed_s)


def test_one_payload_that_always_502s_still_fails(cluster, caller_id):
    """Others succeed around it: the breaker stays closed and that order ends failed."""
    cluster.worker()
    cluster.beat()
    bad = {
        "order_type": "cancel_subscription",
        "external_id": "BAD-1",
        "subscriptionId": "sub-ffffffffffffffffffffffffffffffff",
    }
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(150)] + [bad])
    orders = cluster.wait_settled(ids, timeout_s=60)
    statuses = [orders[i].status for i in ids]
    assert statuses[:-1] == ["complete"] * 150
    assert (orders[ids[-1]].status, orders[ids[-1]].reason) == ("failed", "upstream_502")


def test_a_slow_submit_costs_only_its_own_order(cluster, caller_id):
    """One submit held past the lease (2 s) and the read timeout: only it is ambiguous."""
    cluster.env["ORDERS_LEASE_S"] = "2"
    cluster.env["ORDERS_UPSTREAM_READ_TIMEOUT_S"] = "4"
    cluster.stub.script("submit", [{"kind": "ambiguous", "hold_s": 8}])
    cluster.worker()
    cluster.beat()
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(50)])
    orders = cluster.wait_settled(ids, timeout_s=60)
    assert {o.status for o in orders.values()} == {"complete"}
    reasons = _reasons(cluster, ids)
    touched = [i for i in ids if reasons[i] & {"submit_timeout", "worker_lost_during_submit"}]
    assert len(touched) == 1, {i: reasons[i] for i in touched}
    lost = [i for i in ids if reasons[i] & {"lease_expired", "worker_lost_during_submit"}]
    assert not lost
    assert not cluster.stub.orders()["duplicates"]
