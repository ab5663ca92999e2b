"""``orders status --operator``: every caller's counts and the upstream's state, read through
the operator API (``GET /v1/operator/status``, an operator key)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from schemas.intake import OperatorStatusResponse
from worker.cli.api_client import ApiClient
from worker.flow.view import Snapshot

NO_UPSTREAM = "upstream: state unavailable (the API could not read it from Redis)"


class OperatorClient(ApiClient):
    """The operator API's reads, with an operator key."""

    def operator_status(self) -> OperatorStatusResponse:
        """``GET /v1/operator/status``, parsed."""
        return OperatorStatusResponse.model_validate(self._call("GET", "/v1/operator/status"))


def callers_table(answer: OperatorStatusResponse) -> Table:
    """One row per caller: its total and one column per status any caller has."""
    statuses = sorted({s for c in answer.callers for s in c.counts})
    table = Table("caller", "id", "total", *statuses)
    for c in answer.callers:
        name = f"{c.name} (revoked)" if c.revoked else c.name
        counts = [str(c.counts.get(s, 0)) for s in statuses]
        table.add_row(name, c.id, str(c.total), *counts)
    return table


def upstream_line(answer: OperatorStatusResponse) -> str:
    """The upstream's state in the line ``orders status`` has always printed."""
    up = answer.upstream
    if up is None:
        return NO_UPSTREAM
    return Snapshot(
        ceiling=up.ceiling,
        limit=up.limit,
        in_flight=up.in_flight,
        breaker=up.breaker,
        paused_s=up.paused_s,
        calls=up.calls,
    ).line()


def show_operator_status(client: OperatorClient, out: Console) -> OperatorStatusResponse:
    """Print every caller's counts, then the upstream line; returns the answer."""
    answer = client.operator_status()
    out.print(callers_table(answer))
    out.print(upstream_line(answer))
    return answer
