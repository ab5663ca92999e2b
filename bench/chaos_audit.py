"""The chaos run's audit: what the database, the stub's record and the webhook receiver say
about every accepted order, as one table of lines that pass or fail.

Each line is ``(name, figure, ok)``; ``ok`` is ``None`` for a line that only informs.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, text

from bench.callers import UNKNOWN_SUBSCRIPTION
from worker.settings import normalise_database_url
from worker.states import TERMINAL, Status, can_move

__all__ = ["Audit", "Line", "audit", "held_or_final", "print_table"]

FINAL = frozenset(str(s) for s in TERMINAL)


@dataclass(frozen=True)
class Line:
    name: str
    figure: str
    ok: bool | None


@dataclass
class Audit:
    lines: list[Line] = field(default_factory=list)

    def add(self, name: str, figure: object, ok: bool | None = None) -> None:
        self.lines.append(Line(name, str(figure), ok))

    @property
    def passed(self) -> bool:
        return all(line.ok is not False for line in self.lines)


def held_or_final(status: str, reason: str | None, due_at: object) -> bool:
    """Terminal, or ``submit_unknown`` held for an operator (nothing scheduled)."""
    return status in FINAL or (status == "submit_unknown" and due_at is None)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _load(
    db_url: str, caller_ids: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
    engine = create_engine(normalise_database_url(db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, caller_id, batch_id, status, reason, due_at, upstream_id,"
                    " external_id, created_at, payload FROM orders"
                    " WHERE caller_id = ANY(:callers)"
                ),
                {"callers": caller_ids},
            ).mappings()
            orders = {row["id"]: dict(row) for row in rows}
            events: dict[str, list[Any]] = defaultdict(list)
            for row in conn.execute(
                text(
                    "SELECT order_id, at, from_status, to_status FROM order_events"
                    " ORDER BY order_id, at, id"
                )
            ):
                events[row.order_id].append(row)
    finally:
        engine.dispose()
    return orders, events


def _history_ok(status: str, rows: list[Any]) -> bool:
    """First row creates the order as received; each row is a legal move from the last."""
    if not rows or rows[0].from_status is not None or rows[0].to_status != "received":
        return False
    for before, after in itertools.pairwise(rows):
        if after.from_status != before.to_status:
            return False
        if not can_move(Status(after.from_status), Status(after.to_status)):
            return False
    return rows[-1].to_status == status


def audit(
    *,
    db_url: str,
    accepted: dict[str, list[str]],
    caller_ids: dict[str, str],
    stub_orders: dict[str, Any],
    stub_stats: dict[str, Any],
    receiver: dict[str, Any],
    ceiling: int,
    small_callers: tuple[str, ...],
    big_callers: tuple[str, ...],
) -> Audit:
    """Audit every order of ``caller_ids`` (name -> id); ``accepted``: ids answered 2xx."""
    orders, events = _load(db_url, list(caller_ids.values()))
    result = Audit()
    acked = {oid for ids in accepted.values() for oid in ids}
    result.add("accepted (answered 2xx)", len(acked))
    extra = set(orders) - acked
    result.add("stored but never answered 2xx (e.g. cut by a restart)", len(extra))

    terminal = Counter(o["status"] for o in orders.values() if o["status"] in FINAL)
    result.add("terminal", f"{sum(terminal.values())} {dict(sorted(terminal.items()))}")
    held = [o for o in orders.values() if o["status"] == "submit_unknown" and o["due_at"] is None]
    held_reasons = Counter(o["reason"] for o in held)
    result.add("held for an operator (by reason)", f"{len(held)} {dict(held_reasons)}")
    lost = [oid for oid in acked if oid not in orders or not held_or_final(**_state(orders[oid]))]
    result.add("lost (accepted, not terminal nor held)", _sample(lost), not lost)

    # Upstream duplicates: two upstream orders for one external_id, unless we held that order.
    held_external = {o["external_id"] for o in held}
    dups = {e: n for e, n in stub_orders["duplicates"].items() if e not in held_external}
    result.add("upstream duplicates (outside held orders)", _sample(list(dups)), not dups)

    by_upstream = {r["id"]: r for r in stub_orders["orders"]}
    unexplained = []
    for o in orders.values():
        told = ((o["payload"] or {}).get("forSubscription") or {}).get("id") == UNKNOWN_SUBSCRIPTION
        if o["status"] == "failed":
            # An unknown subscription never reaches the submit's 404: the stub's preview
            # (documented 200/401/502 only) answers it 502 every time, so it ends failed.
            if told and o["reason"] == "upstream_502":
                continue
            record = by_upstream.get(o["upstream_id"] or "")
            if record is None or record.get("orderState") != "failed":
                unexplained.append(f"{o['id']}:{o['reason']}")
        elif o["status"] == "rejected" and not told:
            unexplained.append(f"{o['id']}:{o['reason']}")
    result.add("failed/rejected not told by the stub", _sample(unexplained), not unexplained)
    wrong_upstream = [
        o["id"]
        for o in orders.values()
        if o["status"] == "complete"
        and (by_upstream.get(o["upstream_id"] or "") or {}).get("external_id") != o["external_id"]
    ]
    result.add("complete without its upstream order", _sample(wrong_upstream), not wrong_upstream)

    bad_history = [oid for oid, o in orders.items() if not _history_ok(o["status"], events[oid])]
    result.add("history inconsistent with the final state", _sample(bad_history), not bad_history)

    seen = {(row[0], row[1]) for row in receiver["seen"]}
    missing = [
        o["id"]
        for o in orders.values()
        if held_or_final(**_state(o)) and (o["id"], f"order.{o['status']}") not in seen
    ]
    result.add("final state without a verified webhook", _sample(missing), not missing)
    result.add(
        "webhooks: verified / refused while failing / forged / repeats",
        f"{receiver['verified']} / {receiver['refused']} / {receiver['forged']} / "
        f"{receiver['duplicates']}",
        receiver["forged"] == 0,
    )

    _fairness(result, orders, events, caller_ids, small_callers, big_callers)
    peak = int(stub_stats.get("peak_in_flight", 0))
    refused = sum(stub_stats.get("refused", {}).values())
    result.add(
        "peak upstream calls in flight / ceiling (refused by the stub)",
        f"{peak} / {ceiling} ({refused})",
        peak <= ceiling,
    )
    return result


def _state(order: dict[str, Any]) -> dict[str, Any]:
    return {"status": order["status"], "reason": order["reason"], "due_at": order["due_at"]}


def _fairness(
    result: Audit,
    orders: dict[str, dict[str, Any]],
    events: dict[str, list[Any]],
    caller_ids: dict[str, str],
    small: tuple[str, ...],
    big: tuple[str, ...],
) -> None:
    """Seconds from acceptance to final: per order for small callers, per batch for big ones."""
    names = {v: k for k, v in caller_ids.items()}
    per_caller: dict[str, list[float]] = defaultdict(list)
    batches: dict[str, tuple[datetime, datetime]] = {}
    for oid, o in orders.items():
        rows = events[oid]
        if o["status"] not in FINAL or not rows:
            continue
        seconds = (rows[-1].at - o["created_at"]).total_seconds()
        per_caller[names[o["caller_id"]]].append(seconds)
        if names[o["caller_id"]] in big and o["batch_id"]:
            first, last = batches.get(o["batch_id"], (o["created_at"], rows[-1].at))
            batches[o["batch_id"]] = (min(first, o["created_at"]), max(last, rows[-1].at))
    for name in (*small, *big):
        values = per_caller.get(name, [])
        result.add(
            f"latency to final, {name} (p50 / p99 / max s)",
            f"{_pct(values, 0.5):.1f} / {_pct(values, 0.99):.1f} / {max(values, default=0):.1f}",
        )
    batch_s = [(last - first).total_seconds() for first, last in batches.values()]
    small_p50 = statistics.median([v for n in small for v in per_caller.get(n, [])] or [0.0])
    big_p50 = statistics.median(batch_s or [0.0])
    result.add(
        "fairness: small callers' p50 < big batches' p50 (s)",
        f"{small_p50:.1f} < {big_p50:.1f}",
        small_p50 < big_p50 or not batch_s,
    )


def _sample(items: list[str]) -> str:
    return f"{len(items)}" + (f" e.g. {', '.join(sorted(items)[:3])}" if items else "")


def print_table(result: Audit) -> None:
    width = max(len(line.name) for line in result.lines)
    print(f"\n{'audit line':<{width}}  {'figure':<40}  result")
    for line in result.lines:
        mark = "" if line.ok is None else ("ok" if line.ok else "FAIL")
        print(f"{line.name:<{width}}  {line.figure:<40}  {mark}")
    print(f"\naudit {'PASSED' if result.passed else 'FAILED'}")
