"""The ``orders`` command: services (api, worker, beat, stub), setup, and client commands."""

from __future__ import annotations

import os
import socket
import sys
from enum import StrEnum
from pathlib import Path

import typer

from worker.cli.keys import keys_app
from worker.settings import ConfigError, Settings, get_settings


class Pool(StrEnum):
    """Celery pools that work here: the client code is blocking, not monkey-patched."""

    prefork = "prefork"
    threads = "threads"
    solo = "solo"


app = typer.Typer(help="The partner order worker.", no_args_is_help=True, add_completion=False)
app.add_typer(keys_app, name="keys")
# The client commands' common options (calling our own API).
API_URL = typer.Option(None, "--api-url", help="Intake API (default ORDERS_API_URL).")
API_KEY = typer.Option(None, "--key", help="Caller API key (default ORDERS_API_KEY).")


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _export_redis_url() -> str:
    """Resolve Redis (bundled if unset) and export it so child processes share it."""
    from worker.embedded_redis import resolve_redis_url

    url = resolve_redis_url(_settings())
    os.environ["ORDERS_REDIS_URL"] = url
    get_settings.cache_clear()
    return url


def _logging() -> None:
    from worker.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from worker import migrate as migrations

    settings = _settings()
    migrations.upgrade(settings.database_url)
    migrations.make_private(settings.database_url, settings.home)
    typer.echo(f"database at head: {settings.database_url.split('@')[-1]}")


@app.command()
def worker(
    concurrency: int = typer.Option(
        4, help="Order processes (prefork; two per core measured best) or threads."
    ),
    # prefork: the work is CPU-bound in aggregate; one GIL per process uses every core.
    pool: Pool = typer.Option(Pool.prefork, help="Celery pool (gevent/eventlet not supported)."),
    queues: str = typer.Option(
        "orders,webhooks",
        help="Queues to consume. Both (the default): two pools of processes, one per queue, "
        "started and supervised here; one of them: just that pool (to run webhooks apart).",
    ),
    webhook_concurrency: int = typer.Option(
        2,
        min=1,
        help="Webhook processes when both queues are consumed (each sends a chunk "
        "of ORDERS_WEBHOOK_CHUNK_SIZE deliveries at once).",
    ),
    nice: int = typer.Option(
        0,
        min=0,
        max=19,
        help="Lower the worker's CPU priority, so that on a shared host the "
        "intake API keeps answering fast while the pipeline runs flat out.",
    ),
) -> None:
    """Run the workers: preview, submit, follow orders; deliver webhooks in their own pool."""
    names = {q.strip() for q in queues.split(",") if q.strip()}
    if names == {"orders", "webhooks"}:
        from worker.cli.pools import pool_commands, supervise

        # Resolve (maybe start) the bundled Redis once, so both pools share it.
        _export_redis_url()
        commands = pool_commands(
            concurrency=concurrency,
            webhook_concurrency=webhook_concurrency,
            pool=pool.value,
            nice=nice,
        )
        raise typer.Exit(supervise(commands))
    if nice:
        os.nice(nice)
    _logging()
    url = _export_redis_url()
    from worker.queue.app import configure

    celery = configure(url, _settings())
    import worker.queue.tasks  # noqa: F401  (registers the tasks)
    from worker.db import get_engine

    # The database driver is imported here, once, not by each process after the fork (a
    # quarter of a second of each one's CPU on its first order).
    get_engine(_settings().database_url)

    celery.worker_main(
        [
            "worker",
            "-P",
            pool.value,
            "-c",
            str(concurrency),
            "-Q",
            ",".join(sorted(names)),
            "-n",
            f"orders-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            _settings().log_level,
        ]
    )
    from worker.queue import watchdog

    # Celery's worker_main drops the worker's exit code: a supervisor must see the stall.
    if watchdog.stalled():
        raise typer.Exit(watchdog.STALLED_EXIT_CODE)


@app.command()
def beat() -> None:
    """Run Celery beat: the sweeper every ORDERS_SWEEP_INTERVAL_S seconds."""
    _logging()
    url = _export_redis_url()
    settings = _settings()
    from worker.queue.app import configure

    celery = configure(url, settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    celery.start(
        [
            "beat",
            "-s",
            str(settings.home / "celerybeat-schedule"),
            "--loglevel",
            settings.log_level,
        ]
    )


@app.command()
def api(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes (one per core)."),
) -> None:
    """Run the HTTP intake API (FastAPI under uvicorn)."""
    _logging()
    _export_redis_url()
    import uvicorn

    from worker.console.session import console_secret

    try:  # a weak secret stops the start with one line (created here once, before --workers)
        console_secret(_settings())
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None

    from worker.api.http_limits import BoundedH11Protocol

    uvicorn.run(
        "worker.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        # h11, not httptools: bounded headers (size here, time in the protocol).
        http=BoundedH11Protocol,
        h11_max_incomplete_event_size=_settings().http_max_header_bytes,
    )


@app.command()
def stub(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(18080, help="Port to bind."),
) -> None:
    """Run the upstream stub (settings from STUB_* variables; see api_stub/config.py)."""
    from api_stub.server import run

    run(host=host, port=port)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        sys.exit(2)


@app.command()
def submit(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON Lines or CSV."),
    api_url: str | None = API_URL,
    key: str | None = API_KEY,
    batch_size: int = typer.Option(1000, min=1, max=10000),
    follow: bool = typer.Option(True, help="Follow the orders until they settle."),
    timeout_s: float = typer.Option(3600.0, help="How long to follow."),
    results: Path | None = typer.Option(
        None, "--results", dir_okay=False, help="Write the batches' results (JSON Lines) here."
    ),
) -> None:
    """Submit a file of order payloads through the API, then follow them to the end."""
    from worker.cli.output import (
        client_from,
        console,
        download_results,
        exit_on_error,
        status_table,
        submit_file,
    )

    client = client_from(api_url, key)
    batch_ids: list[str] = []
    with exit_on_error(ValueError):
        counts = submit_file(
            client,
            file,
            batch_size=batch_size,
            follow=follow,
            timeout_s=timeout_s,
            batch_ids=batch_ids,
        )
    console.print(status_table(counts))
    if results is not None:
        with exit_on_error(OSError):
            n = download_results(client, batch_ids, results)
        console.print(f"results: {n} lines in {results}")


@app.command("batch")
def batch_cmd(
    batch_id: str = typer.Argument(..., help="The batch id (bat_...)."),
    api_url: str | None = API_URL,
    key: str | None = API_KEY,
    watch: bool = typer.Option(False, "--watch", help="Refresh until it stops running."),
    action: str | None = typer.Option(
        None, "--action", help="approve, cancel or resume the batch first."
    ),
) -> None:
    """Show a batch: state, counts, pace and ETA, totals, halt, with a progress bar."""
    from worker.cli.output import client_from, console, exit_on_error, show_batch

    client = client_from(api_url, key)
    with exit_on_error():
        if action is not None:
            if action not in ("approve", "cancel", "resume"):
                raise typer.BadParameter("approve, cancel or resume", param_hint="--action")
            answer = client.batch_action(batch_id, action)
            console.print(
                f"{action}: cancelled {answer['cancelled']}, released {answer['released']}"
            )
        show_batch(client, batch_id, watch=watch)


@app.command()
def status(
    order_id: str | None = typer.Argument(None, help="One order: its view and history."),
    batch: str | None = typer.Option(None, help="Counts for one batch."),
    status_filter: str | None = typer.Option(None, "--status", help="Only this status."),
    operator: bool = typer.Option(
        False,
        "--operator",
        help="Every caller's counts and the upstream's state, through the operator API "
        "(operator key).",
    ),
    api_url: str | None = API_URL,
    key: str | None = API_KEY,
) -> None:
    """Show one order with its history, or counts by status (optionally for one batch); with
    --operator, every caller's counts and the upstream's state."""
    from collections import Counter

    from worker.cli.output import (
        client_from,
        client_of,
        console,
        exit_on_error,
        show_order,
        status_table,
    )

    if operator:
        if order_id or batch or status_filter:
            typer.echo(
                "--operator shows every caller's counts: give no order, --batch or --status",
                err=True,
            )
            raise typer.Exit(2)
        from worker.cli.operator_status import OperatorClient, show_operator_status

        operator_client = client_of(OperatorClient, api_url, key)
        try:
            with exit_on_error():
                show_operator_status(operator_client, console)
        finally:
            operator_client.close()
        return
    client = client_from(api_url, key)
    with exit_on_error():
        if order_id:
            show_order(client, order_id)
            return
        views = client.orders(batch_id=batch, status=status_filter)
        console.print(status_table(Counter(v["status"] for v in views)))


@app.command()
def retry(
    order_id: str | None = typer.Argument(None, help="One order to retry."),
    status_filter: str = typer.Option("failed", "--status", help="Status to retry."),
    reason: str | None = typer.Option(None, help="Only this reason, e.g. upstream_502."),
    batch: str | None = typer.Option(None, help="Only this batch."),
    at: str | None = typer.Option(None, help="When (ISO 8601); default now."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Only print how many orders match, and a sample; schedule none."
    ),
    operator: bool = typer.Option(
        False, "--operator", help="Any caller's orders, through the operator API (operator key)."
    ),
    caller_id: str | None = typer.Option(None, "--caller", help="With --operator: one caller."),
    api_url: str | None = API_URL,
    key: str | None = API_KEY,
) -> None:
    """Schedule a retry of one order, or of all orders matching the filter."""
    from worker.cli.output import client_from, exit_on_error

    client = client_from(api_url, key)
    with exit_on_error():
        if order_id:
            answer = client.retry_answer(order_id, operator=operator, at=at)
        else:
            filters: dict[str, str | bool | None] = {
                "status": status_filter,
                "reason": reason,
                "batch_id": batch,
                "at": at,
            }
            if dry_run:
                filters["dry_run"] = True
            if operator:
                filters["caller_id"] = caller_id
            answer = client.retry_answer(None, operator=operator, **filters)
    if dry_run and not order_id:
        typer.echo(f"would retry: {answer['matched']} (dry run: nothing scheduled)")
        for sample_id in answer.get("sample") or []:
            typer.echo(f"  {sample_id}")
        return
    typer.echo(f"scheduled: {answer['scheduled']}")


@app.command()
def resolve(
    order_id: str = typer.Argument(..., help="A held submit_unknown order."),
    upstream_id: str | None = typer.Option(
        None, "--upstream-id", help="Found upstream as this id (order-...); checked upstream."
    ),
    not_created: bool = typer.Option(
        False, "--not-created", help="Not created upstream: re-submit it."
    ),
    api_url: str | None = API_URL,
    key: str | None = typer.Option(None, "--key", help="An operator key (default ORDERS_API_KEY)."),
) -> None:
    """Decide a held ambiguous submit (operator key): found upstream, or not created."""
    from worker.cli.output import client_from, exit_on_error

    if (upstream_id is None) == (not not_created):
        typer.echo("give exactly one of --upstream-id ID or --not-created", err=True)
        raise typer.Exit(2)
    client = client_from(api_url, key)
    with exit_on_error():
        view = client.resolve(order_id, upstream_id=upstream_id)
    typer.echo(f"{view['id']}: {view['status']} ({view['reason']})")


@app.command()
def flower(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(5555, help="Port to bind."),
) -> None:
    r"""Run Flower (task-level view of the Celery side) on our broker (extra: \[flower])."""
    url = _export_redis_url()
    from worker.queue.app import configure

    celery = configure(url, _settings())
    celery.start(["flower", f"--address={host}", f"--port={port}"])


@app.command()
def health(
    max_sweep_age_s: float | None = typer.Option(
        None, help="Oldest acceptable sweep (default 3 x ORDERS_SWEEP_INTERVAL_S + 30)."
    ),
) -> None:
    """Exit 0 if the database and Redis answer and a worker ran beat's sweep recently."""
    import time

    from sqlalchemy import text

    from worker.db import get_engine
    from worker.embedded_redis import resolve_redis_url
    from worker.queue.app import LAST_SWEEP_KEY
    from worker.redis_client import redis_client

    settings = _settings()
    limit = max_sweep_age_s or settings.sweep_interval_s * 3 + 30
    problems = []
    try:
        with get_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        problems.append(f"database: {exc}")
    try:
        client = redis_client(resolve_redis_url(settings, start_if_missing=False), profile="check")
        last = client.get(LAST_SWEEP_KEY)
        age = time.time() - float(last) if last else None
        if age is None or age > limit:
            problems.append(f"no sweep in the last {limit:.0f} s (worker or beat not consuming)")
    except Exception as exc:
        problems.append(f"redis: {exc}")
    for problem in problems:
        typer.echo(problem, err=True)
    raise typer.Exit(1 if problems else 0)


@app.command()
def demo(
    orders: int = typer.Option(500, min=1, max=10000, help="How many sample orders."),
    timeout_s: float = typer.Option(300.0, help="How long to wait for them to settle."),
) -> None:
    """Run the whole pipeline locally (bundled Redis, SQLite, the stub) on a sample batch."""
    from worker.cli.demo import run_demo

    raise typer.Exit(run_demo(orders, timeout_s))
