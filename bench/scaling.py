"""Scaling on paper, computed from the end-to-end medians (used by ``bench/report.py``).

Measured inputs (per order, the 0 ms run, where the machine is CPU-bound): CPU ms of the worker,
the API, PostgreSQL and Redis; PostgreSQL transactions and rows written; Redis commands;
upstream calls. Stated assumptions (not measured here, labelled as such in the text): what one
PostgreSQL primary and one Redis sustain, cores per worker host, the upstream's capacity.
"""

from __future__ import annotations

import statistics
from typing import Any

# Assumptions, printed with the section: a dedicated 2-core worker host; a PostgreSQL primary
# on 16 cores with NVMe (group commit); one Redis core for simple commands.
HOST_CORES = 2
PG_CORES = 16
PG_COMMITS_PER_S = 20_000
REDIS_COMMANDS_PER_S = 100_000
UPSTREAM_IN_FLIGHT = 1000
UPSTREAM_LATENCY_S = 0.05


def _median(runs: list[list[dict[str, Any]]], latency: float, get: Any) -> float:
    values = [get(r) for run in runs for r in run if r["latency_ms"] == latency]
    return statistics.median(values) if values else float("nan")


def scaling_section(runs: list[list[dict[str, Any]]]) -> list[str]:
    """The section's Markdown lines."""
    latencies = sorted({r["latency_ms"] for run in runs for r in run})
    base = latencies[0]

    def m(get: Any) -> float:
        return _median(runs, base, get)

    worker = m(lambda r: r["cpu_ms"]["worker"])
    api = m(lambda r: r["cpu_ms"]["api"])
    pg_cpu = m(lambda r: r["cpu_ms"]["postgres"])
    tx = m(lambda r: r["pg"]["xact_commit"] + r["pg"]["xact_rollback"])
    rows = m(lambda r: r["pg"]["tup_inserted"] + r["pg"]["tup_updated"] + r["pg"]["tup_deleted"])
    redis_cmds = m(lambda r: r["redis_commands"])
    calls = m(lambda r: r["upstream_calls"])
    measured = m(lambda r: r["pipeline_per_s"])
    per_host = HOST_CORES * 1000 / worker
    upstream = UPSTREAM_IN_FLIGHT / (calls * UPSTREAM_LATENCY_S)
    pg_bound = min(PG_CORES * 1000 / pg_cpu, PG_COMMITS_PER_S / tx)
    redis_bound = REDIS_COMMANDS_PER_S / redis_cmds
    out = [
        "## Scaling on paper",
        "",
        f"From the medians at {base:g} ms (this machine CPU-bound, everything on 2 cores): per "
        f"order the worker spends **{worker:.2f} ms** of CPU, the API {api:.2f} ms (intake in "
        f"batches of 1,000), PostgreSQL {pg_cpu:.2f} ms; it costs **{tx:.2f} transactions** and "
        f"**{rows:.1f} rows written** (orders, history, outbox, updates), {redis_cmds:.1f} "
        f"Redis commands and {calls:.2f} upstream calls. Measured here: {measured:.0f} orders/s "
        "with the API, worker, beat, stub, PostgreSQL and Redis sharing two cores.",
        "",
        "**What bounds one host.** The worker's CPU: the work is I/O-bound per order but "
        f"CPU-bound in aggregate (parsing, pydantic, SQLAlchemy, httpx). A dedicated {HOST_CORES}"
        f"-core worker host (assumption) drives about {HOST_CORES} x 1000 / {worker:.2f} = "
        f"**{per_host:.0f} orders/s** when the upstream's latency is hidden by concurrency "
        "(the 50 and 200 ms runs reach nearly the 0 ms throughput). Redis is never the bound "
        f"({redis_cmds:.1f} commands per order); PostgreSQL on the same box takes "
        f"{pg_cpu:.2f} ms per order, about a fifth of the worker's.",
        "",
        "**Adding worker hosts** adds throughput linearly until one of the shared parts bounds it:",
        "",
        f"- the upstream: with {UPSTREAM_IN_FLIGHT} calls in flight allowed (assumption; the "
        f"fleet-wide budget `ORDERS_UPSTREAM_MAX_IN_FLIGHT` caps us there) at "
        f"{UPSTREAM_LATENCY_S * 1000:.0f} ms per call, {UPSTREAM_IN_FLIGHT} / ({calls:.2f} x "
        f"{UPSTREAM_LATENCY_S}) = **{upstream:.0f} orders/s**, whatever the number of hosts;",
        f"- PostgreSQL's write rate: at X orders/s the primary commits {tx:.2f}·X transactions "
        f"and writes {rows:.1f}·X rows per second. A {PG_CORES}-core primary on NVMe "
        f"(assumption: ~{PG_COMMITS_PER_S:,} small commits/s with group commit, CPU "
        f"{pg_cpu:.2f} ms per order) bounds us near **{pg_bound:,.0f} orders/s**;",
        f"- Redis: ~{REDIS_COMMANDS_PER_S:,} simple commands/s on one core (assumption) / "
        f"{redis_cmds:.1f} per order = {redis_bound:,.0f} orders/s: far above the others.",
        "",
        "| worker hosts | worker bound | upstream bound | PostgreSQL bound | expected |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for hosts in (1, 2, 4, 8, 16, 32):
        expected = min(hosts * per_host, upstream, pg_bound)
        out.append(
            f"| {hosts} | {hosts * per_host:,.0f} | {upstream:,.0f} | {pg_bound:,.0f} "
            f"| {expected:,.0f} orders/s |"
        )
    out += [
        "",
        "The API is not on this path: a batch of 1,000 costs it "
        f"{api * 1000:.0f} ms of CPU; polling costs what the GET line above says per request, "
        "so polling capacity grows with API processes (and read replicas, below).",
        "",
        "**Beyond one database and one Redis.**",
        "",
        "- Redis: the broker and the shared upstream budget (permits, learned limit, breaker) "
        "live in one Redis. Redis Sentinel gives failover (the budget's keys are short-lived "
        "and rebuilt; the broker is only a transport: a failover delays, never loses, orders "
        "since the database is the source of truth). Redis Cluster would shard the broker by "
        "queue, but the budget's Lua scripts touch several keys: keep them in one hash slot "
        "(`{upstream}` hash tags) so one shard owns the budget.",
        "- PostgreSQL: orders and their history grow by time and are read mostly by recent "
        "time (ids are time-ordered): partition `orders`, `order_events` and "
        "`webhook_deliveries` by creation month so retention drops a partition instead of "
        "deleting rows, and indexes stay the size of the hot month. Polling "
        "(`GET /v1/orders/{id}`, lists, the console) can read from replicas with a "
        "read-your-writes caveat (an order just accepted may be missing from a lagging "
        "replica for a moment: answer from the primary on a miss). Beyond one primary's "
        "write rate, shard by caller (every query is per caller) with one broker per shard.",
    ]
    return out
