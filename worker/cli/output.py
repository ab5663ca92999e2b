"""Client commands of ``orders``: submit a file, show status, schedule retries."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.cli.api_client import (
    ApiCallError,
    ApiClient,
    ApiUnavailable,
    describe,
    read_orders,
    settled,
    with_retries,
)
from worker.ids import sha256_hex
from worker.settings import get_settings

console = Console(stderr=True)
C = TypeVar("C", bound=ApiClient)


def client_from(api_url: str | None, key: str | None) -> ApiClient:
    """A client for ``--api-url`` and ``--key`` (defaults: ``ORDERS_*``)."""
    return client_of(ApiClient, api_url, key)


def client_of(factory: type[C], api_url: str | None, key: str | None) -> C:
    """A client of the class ``factory`` for ``--api-url`` and ``--key``."""
    settings = get_settings()
    key = key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        raise typer.BadParameter("give --key or set ORDERS_API_KEY (see `orders keys create`)")
    return factory(api_url or settings.api_url, key)


@contextmanager
def exit_on_error(*also: type[Exception]) -> Iterator[None]:
    """An error answer from the API, an API that stayed unreachable, or one of ``also``: one
    line on stderr, exit code 1."""
    errors: tuple[type[Exception], ...] = (ApiCallError, ApiUnavailable, *also)
    try:
        yield
    except errors as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def submit_file(
    client: ApiClient,
    path: Path,
    *,
    batch_size: int,
    follow: bool,
    timeout_s: float,
    batch_ids: list[str] | None = None,
) -> Counter[str]:
    """Send the file's orders in batches, then follow them until settled; return status counts.

    Each batch carries an Idempotency-Key derived from the file's content, so running the same
    command again returns the orders it already created instead of creating them twice.
    """
    payloads = read_orders(path)
    digest = sha256_hex(path.read_bytes())[:24]
    batch_ids = batch_ids if batch_ids is not None else []
    errors: list[tuple[int, dict[str, Any]]] = []
    with _progress() as progress:
        task = progress.add_task("accepted", total=len(payloads))
        for start in range(0, len(payloads), batch_size):
            chunk = payloads[start : start + batch_size]
            try:
                # The key makes a repeat safe: a 409 means our earlier attempt is in flight.
                answer = with_retries(
                    lambda: client.submit_batch(chunk, f"submit-{digest}-{start}"),  # noqa: B023
                    give_up_after_s=GIVE_UP_AFTER_S,
                    what=f"sending lines {start + 1}-{start + len(chunk)}",
                    retry_also=lambda e: isinstance(e, ApiCallError) and e.status_code == 409,
                    on_retry=_say_retrying(progress),
                )
            except ApiCallError as exc:
                if exc.status_code != 422:
                    raise
                # No line of this chunk was valid: report them all and go on with the next.
                errors += [
                    (start + i, {"message": str(exc), "fields": []}) for i in range(len(chunk))
                ]
                progress.advance(task, len(chunk))
                continue
            batch_ids.append(answer["batch_id"])
            for result in answer["results"]:
                if "error" in result:
                    errors.append((start + result["index"], result["error"]))
            progress.advance(task, len(answer["results"]))
    for index, error in errors[:20]:
        console.print(f"[red]line {index + 1}[/red]: {error.get('message')} {error.get('fields')}")
    if len(errors) > 20:
        console.print(f"... and {len(errors) - 20} more rejected lines")
    accepted = len(payloads) - len(errors)
    console.print(f"{accepted} accepted, {len(errors)} rejected, batches: {', '.join(batch_ids)}")
    if not follow or not accepted:
        return Counter({"rejected_at_intake": len(errors)})
    return follow_batches(client, batch_ids, total=accepted, timeout_s=timeout_s)


NO_PROGRESS_HINT = "no progress — is a worker running? see `orders health`"
# An API process or the database restarting answers 5xx or refuses connections for seconds;
# following orders that take hours should outlast that and stop only when the API stays down.
GIVE_UP_AFTER_S = 300.0


def _say_retrying(progress: Progress) -> Callable[[Exception, float], None]:
    def say(exc: Exception, delay_s: float) -> None:
        progress.console.print(f"[yellow]{describe(exc)}[/yellow]; retrying in {delay_s:.1f} s")

    return say


def follow_batches(
    client: ApiClient,
    batch_ids: list[str],
    *,
    total: int,
    timeout_s: float,
    stall_hint_s: float = 30.0,
    give_up_after_s: float = GIVE_UP_AFTER_S,
) -> Counter[str]:
    """Poll the batches until every order is settled (or the timeout); show progress.

    When no order has changed status for ``stall_hint_s``, say so once per stall (a missing
    worker or beat otherwise looks like a frozen bar). A poll failing with a 5xx or a
    connection error is repeated with backoff, for up to ``give_up_after_s``.

    Raises:
        ApiUnavailable: polls kept failing for ``give_up_after_s``; the message says why.
    """
    deadline = time.monotonic() + timeout_s
    counts: Counter[str] = Counter()
    last_change_at = time.monotonic()
    hinted = False
    with _progress() as progress:
        task = progress.add_task("settled", total=total)
        on_retry = _say_retrying(progress)
        while True:
            views = with_retries(
                lambda: [v for b in batch_ids for v in client.orders(batch_id=b)],
                give_up_after_s=give_up_after_s,
                what="following the orders",
                on_retry=on_retry,
            )
            now = time.monotonic()
            new_counts = Counter(v["status"] for v in views)
            if new_counts != counts:
                counts, last_change_at, hinted = new_counts, now, False
            elif not hinted and now - last_change_at >= stall_hint_s:
                progress.console.print(
                    f"[yellow]{NO_PROGRESS_HINT}[/yellow] ({now - last_change_at:.0f} s unchanged)"
                )
                hinted = True
            done = sum(1 for v in views if settled(v))
            progress.update(
                task,
                completed=done,
                description=" ".join(f"{k}:{n}" for k, n in sorted(counts.items())),
            )
            if done >= total or now > deadline:
                return counts
            time.sleep(0.5)


def download_results(
    client: ApiClient, batch_ids: list[str], out: Path, *, give_up_after_s: float = GIVE_UP_AFTER_S
) -> int:
    """Write every batch's results file to ``out`` (JSON Lines, ``batch_id`` added to each
    line); a dropped download resumes after the last line written. Returns the lines written."""
    import orjson

    written = 0
    with out.open("wb") as sink:
        for batch_id in batch_ids:
            state = {"after": -1, "n": 0}

            def fetch(batch_id: str = batch_id, state: dict[str, int] = state) -> None:
                for line in client.batch_results(batch_id, after=state["after"]):
                    sink.write(orjson.dumps({"batch_id": batch_id, **line}) + b"\n")
                    state["after"] = int(line["index"])
                    state["n"] += 1

            with_retries(
                fetch, give_up_after_s=give_up_after_s, what=f"downloading {batch_id} results"
            )
            written += state["n"]
    return written


def show_batch(
    client: ApiClient, batch_id: str, *, watch: bool, interval_s: float = 1.0
) -> dict[str, Any]:
    """The batch object with a progress bar of its final orders; ``watch``: until it stops
    running."""
    with _progress() as progress:
        task = progress.add_task(batch_id, total=None)
        while True:
            view = client.batch(batch_id)
            counts = view["counts"]
            eta = f" eta {view['eta_s']:.0f}s" if view.get("eta_s") else ""
            progress.update(
                task,
                total=counts["total"],
                completed=view["final"],
                description=f"{view['state']}{eta} "
                + " ".join(f"{k}:{n}" for k, n in sorted(counts.items()) if k != "total"),
            )
            if not watch or view["state"] != "running":
                break
            time.sleep(interval_s)
    console.print_json(data=view)
    return view


def status_table(counts: Counter[str]) -> Table:
    table = Table("status", "orders")
    for status, n in sorted(counts.items()):
        table.add_row(status, str(n))
    return table


def show_order(client: ApiClient, order_id: str) -> None:
    view = client.order(order_id)
    console.print_json(data=view)
    table = Table("at", "from", "to", "attempt", "reason", "message")
    for event in client.events(order_id):
        table.add_row(
            event["at"],
            event["from"] or "",
            event["to"],
            str(event["attempt"]),
            event["reason"] or "",
            (event["message"] or "")[:60],
        )
    console.print(table)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


__all__ = [
    "client_from",
    "download_results",
    "exit_on_error",
    "follow_batches",
    "show_batch",
    "show_order",
    "status_table",
    "submit_file",
]
