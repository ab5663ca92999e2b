"""Benchmark of the console and the ``/v1`` lists with a real history (not a test).

Fills ``--database-url`` (migrated to head) with ``--orders`` orders once (default 200,000:
5 callers, batches of 500 over the last 7 days; ~90 % complete, 4 % failed by two reasons,
2 % rejected, 2 % in flight, 50 held ``submit_unknown``; 3 history rows per order; 3 webhook
endpoints with 50,000 deliveries), then times every console page and every ``/v1`` list call
in process (FastAPI ``TestClient``: the whole ASGI stack, no network): median and max of
``--runs`` after one warm-up. Finally prints ``EXPLAIN ANALYZE`` of the queries behind the
filters. Re-runs reuse the data (``--refill`` starts over). Example::

    createdb -h 127.0.0.1 -U root bench_console
    python bench/console.py --database-url postgresql://root@127.0.0.1:5432/bench_console
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, text

from worker import migrate
from worker.api import create_app
from worker.console.queries import id_floor
from worker.db import get_engine, transaction
from worker.intake.callers import create_caller, hash_key
from worker.models import (
    ORDER_EVENTS,
    ORDERS,
    Caller,
    WebhookDelivery,
    WebhookEndpoint,
)
from worker.settings import Settings, normalise_database_url

CHUNK = 5000
PAYLOAD = {"order_type": "new", "country": "GB", "checkoutId": "basket-1"}


def _id(prefix: str, at: datetime) -> str:
    return f"{prefix}_{int(at.timestamp() * 1000):012x}{secrets.token_hex(10)}"


def _status(rng: random.Random) -> tuple[str, str | None]:
    x = rng.random()
    if x < 0.90:
        return "complete", None
    if x < 0.93:
        return "failed", "upstream_502"
    if x < 0.94:
        return "failed", "upstream_timeout"
    if x < 0.96:
        return "rejected", "upstream_400"
    if x < 0.98:
        return rng.choice(["received", "previewed", "submitted"]), None
    return "cancelled", "cancelled_by_caller"


def fill(db_url: str, n: int) -> None:
    """Insert ``n`` orders with history, plus webhook endpoints and deliveries."""
    rng = random.Random(11)
    now = datetime.now(UTC)
    with transaction(db_url) as session:
        callers = [create_caller(session, f"bench-{i}")[0].id for i in range(5)]
    engine = get_engine(db_url)
    start = now - timedelta(days=7)
    step = timedelta(days=7) / n
    orders: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    held_left = 50
    batch_id, caller_id = None, callers[0]
    for i in range(n):
        at = start + step * i
        if i % 500 == 0:
            batch_id, caller_id = _id("bat", at), callers[(i // 500) % len(callers)]
        status, reason = _status(rng)
        if held_left and i % (n // 50) == 7:
            status, reason, held_left = "submit_unknown", "held_for_operator", held_left - 1
        open_ = status in {"received", "previewed", "submitted"}
        order_id = _id("ord", at)
        orders.append(
            {
                "id": order_id,
                "caller_id": caller_id,
                "batch_id": batch_id,
                "external_id": f"EXT-{i}",
                "request_hash": "0" * 64,
                "order_type": "new",
                "payload": {**PAYLOAD, "external_id": f"EXT-{i}"},
                "status": status,
                "reason": reason,
                "message": None,
                "attempts": 2,
                "failures": 0,
                "budget_from": at,
                "next_attempt_at": None,
                "due_at": at + timedelta(seconds=30) if open_ else None,
                "lease_owner": None,
                "preview": None,
                "upstream_id": f"order-{i:08x}" if status == "complete" else None,
                "upstream_status": "complete" if status == "complete" else None,
                "created_at": at,
                "updated_at": at + timedelta(seconds=2),
            }
        )
        for k, (frm, to) in enumerate(
            [(None, "received"), ("received", "previewing"), ("previewing", status)]
        ):
            events.append(
                {
                    "order_id": order_id,
                    "at": at + timedelta(seconds=k),
                    "from_status": frm,
                    "to_status": to,
                    "attempt": k,
                    "reason": reason if k == 2 else None,
                    "actor": "worker",
                }
            )
        if len(orders) >= CHUNK:
            _flush(engine, orders, events)
    _flush(engine, orders, events)
    with transaction(db_url) as session:
        endpoints = []
        for i, caller in enumerate(callers[:3]):
            endpoint = WebhookEndpoint(
                id=_id("whe", start),
                caller_id=caller,
                url=f"https://hooks.example.com/{i}",
                secret="whsec_x",
                event_types=None,
                enabled=True,
                disabled_reason=None,
                created_at=start,
            )
            session.add(endpoint)
            endpoints.append(endpoint.id)
    order_ids = [
        r[0]
        for r in engine.connect().execute(select(ORDERS.c.id).order_by(func.random()).limit(50_000))
    ]
    rows = [
        {
            "id": _id("whd", now - timedelta(minutes=i)),
            "endpoint_id": endpoints[i % 3],
            "order_id": oid,
            "event_type": "order.complete",
            "payload": {},
            "status": "failed" if i % 20 == 0 else "delivered",
            "attempts": 1,
            "due_at": None,
            "created_at": now,
            "updated_at": now,
        }
        for i, oid in enumerate(order_ids)
    ]
    with engine.begin() as conn:
        for k in range(0, len(rows), CHUNK):
            conn.execute(insert(WebhookDelivery.__table__), rows[k : k + CHUNK])
        conn.execute(text("ANALYZE"))


def _flush(engine: Any, orders: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        if orders:
            conn.execute(insert(ORDERS), orders)
            conn.execute(insert(ORDER_EVENTS), events)
    orders.clear()
    events.clear()


def timed(client: TestClient, method: str, path: str, runs: int, **kw: Any) -> tuple[float, float]:
    """Median and max milliseconds of ``runs`` calls after one warm-up (each must answer 200)."""
    answer = client.request(method, path, **kw)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        answer = client.request(method, path, **kw)
        times.append((time.perf_counter() - t0) * 1000)
        assert answer.status_code == 200, path
    return statistics.median(times), max(times)


EXPLAIN = {
    "failed orders of one reason, newest first (console orders, attention)": (
        "SELECT id FROM orders WHERE status = 'failed' AND reason = 'upstream_502' "
        "ORDER BY id DESC LIMIT 51"
    ),
    "failed by reason (needs attention)": (
        "SELECT reason, count(*) FROM orders WHERE status = 'failed' GROUP BY reason"
    ),
    "held submit_unknown": (
        "SELECT id FROM orders WHERE status = 'submit_unknown' AND due_at IS NULL "
        "ORDER BY id LIMIT 100"
    ),
    "external_id across callers": "SELECT id FROM orders WHERE external_id = 'EXT-4242'",
    "one batch's progress": (
        "SELECT status, count(*) FROM orders WHERE batch_id = :b GROUP BY status"
    ),
    "orders of a time window (id range from the time)": (
        "SELECT id FROM orders WHERE created_at >= now() - interval '2 days' "
        "AND created_at < now() - interval '1 day' AND id < :before_id "
        "ORDER BY id DESC LIMIT 51"
    ),
    "finished in the last 10 minutes (overview)": (
        "SELECT at, to_status FROM order_events WHERE at >= now() - interval '10 minutes' "
        "AND to_status IN ('complete', 'failed', 'rejected')"
    ),
    "an order's webhook deliveries": (
        "SELECT id FROM webhook_deliveries WHERE order_id = :o ORDER BY id"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="postgresql://root@127.0.0.1:5432/bench_console")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--refill", action="store_true")
    args = parser.parse_args()
    db_url = normalise_database_url(args.database_url)
    if args.refill:
        migrate.downgrade(db_url, "base")
    migrate.upgrade(db_url)
    engine = get_engine(db_url)
    with engine.connect() as conn:
        have = conn.scalar(select(func.count()).select_from(ORDERS)) or 0
    if have < args.orders:
        if have:
            sys.exit(f"{have} orders already there: pass --refill to start over")
        t0 = time.perf_counter()
        fill(db_url, args.orders)
        print(f"filled {args.orders} orders in {time.perf_counter() - t0:.0f} s")
    with transaction(db_url) as session:
        name = f"bench-ops-{secrets.token_hex(3)}"
        _, op_key = create_caller(session, name, role="operator")
        caller = session.scalar(select(Caller).where(Caller.name == "bench-0"))
        assert caller is not None
        caller_id = caller.id
        caller.key_hash = hash_key("ok_bench")
        endpoint = session.scalar(
            select(WebhookEndpoint.id).where(WebhookEndpoint.caller_id == caller_id)
        )
    settings = Settings(
        database_url=db_url, redis_url=args.redis_url, home=Path("/tmp/bench-console")
    )
    with engine.connect() as conn:
        some = conn.execute(
            select(ORDERS.c.id, ORDERS.c.batch_id, ORDERS.c.created_at)
            .where(ORDERS.c.caller_id == caller_id, ORDERS.c.status == "failed")
            .limit(1)
        ).one()
    order_id, batch_id, _ = some
    day_ago = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    two_days = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    caller_headers = {"Authorization": "Bearer ok_bench"}
    console = [
        "/console/overview",
        "/console/overview/live",
        "/console/attention",
        "/console/batches",
        "/console/orders",
        "/console/orders?status=failed",
        "/console/orders?status=failed&reason=upstream_502",
        "/console/orders?status=submit_unknown",
        f"/console/orders?caller={caller_id}&status=received",
        f"/console/orders?batch={batch_id}",
        "/console/orders?external_id=EXT-4242",
        f"/console/orders?since={two_days}&before={day_ago}",
        f"/console/orders/{order_id}",
        "/console/retry?status=failed&reason=upstream_502",
        "/console/webhooks",
        f"/console/webhooks?endpoint={endpoint}",
        "/console/callers",
    ]
    v1 = [
        ("GET", "/v1/orders", None),
        ("GET", "/v1/orders?status=failed", None),
        ("GET", "/v1/orders?status=submit_unknown", None),
        ("GET", f"/v1/orders?batch_id={batch_id}", None),
        ("GET", "/v1/orders?external_id=EXT-4242", None),
        ("GET", f"/v1/orders?created_since={two_days}&created_before={day_ago}", None),
        ("GET", f"/v1/orders/{order_id}/events", None),
        ("GET", f"/v1/webhook-endpoints/{endpoint}/deliveries", None),
        ("GET", "/v1/webhook-endpoints", None),
        ("POST", "/v1/retries", {"reason": "upstream_502", "dry_run": True}),
    ]
    with TestClient(create_app(settings)) as client:
        client.post("/console/login", data={"key": op_key})
        print(f"{'call':<72} {'median ms':>9} {'max ms':>7}")
        for path in console:
            med, worst = timed(client, "GET", path, args.runs)
            print(f"GET {path[:68]:<68} {med:9.1f} {worst:7.1f}")
        for method, path, body in v1:
            med, worst = timed(client, method, path, args.runs, headers=caller_headers, json=body)
            print(f"{method} {path[:67]:<67} {med:9.1f} {worst:7.1f}")
    before_id = id_floor("ord", datetime.now(UTC) - timedelta(days=1) + timedelta(minutes=1))
    with engine.connect() as conn:
        for title, sql in EXPLAIN.items():
            params = {"b": batch_id, "o": order_id, "before_id": before_id}
            plan = conn.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}"), params).scalars()
            print(f"\n-- {title}\n{sql}")
            for line in plan:
                print("   ", line)


if __name__ == "__main__":
    main()
