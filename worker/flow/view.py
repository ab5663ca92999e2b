"""The budget as operators see it: one snapshot read from Redis (for /metrics and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from worker.flow.store import FlowStore


@dataclass(frozen=True, slots=True)
class Snapshot:
    ceiling: int
    limit: int
    in_flight: int
    breaker: str
    paused_s: float
    calls: dict[str, float]
    """Fleet counters since Redis started: ok, dropped (refused), slow, failed, wait_s."""

    def line(self) -> str:
        """One line for ``orders status``."""
        refused = int(self.calls.get("dropped", 0))
        paused = f", paused {self.paused_s:.0f} s" if self.paused_s > 0 else ""
        return (
            f"upstream: breaker {self.breaker}{paused}; limit {self.limit} of {self.ceiling}; "
            f"{self.in_flight} calls in flight; {refused} refused"
        )


def snapshot(store: FlowStore) -> Snapshot:
    """Read the shared state, the permits in flight and the fleet counters."""
    now = store.now_s()
    state = store.read()
    return Snapshot(
        ceiling=store.cfg.ceiling,
        limit=min(state.limit, store.cfg.ceiling),
        in_flight=store.in_flight(),
        breaker=str(state.breaker.mode),
        paused_s=max(0.0, state.paused_until - now),
        calls=store.stats(),
    )


def line_from_metrics(text: str) -> str | None:
    """The ``orders status`` line from the API's ``/metrics`` text (None if it has no budget)."""
    values: dict[str, float] = {}
    breaker = "?"
    dropped = 0.0
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("orders_upstream_"):
            continue
        for sample in family.samples:
            if sample.name == "orders_upstream_breaker" and sample.value == 1.0:
                breaker = sample.labels.get("state", "?")
            elif sample.name == "orders_upstream_calls_total":
                if sample.labels.get("signal") == "dropped":
                    dropped = sample.value
            elif not sample.labels:
                values[sample.name.removeprefix("orders_upstream_")] = sample.value
    if "limit" not in values:
        return None
    return Snapshot(
        ceiling=int(values.get("ceiling", 0)),
        limit=int(values["limit"]),
        in_flight=int(values.get("in_flight", 0)),
        breaker=breaker,
        paused_s=values.get("paused_seconds", 0.0),
        calls={"dropped": dropped},
    ).line()
