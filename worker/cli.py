"""The ``orders`` command: services (api, worker, beat, stub), setup, and client commands."""

from __future__ import annotations

import os
import socket
import sys

import typer

from worker.settings import ConfigError, get_settings

app = typer.Typer(help="The partner order worker.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Caller API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _settings():  # type: ignore[no-untyped-def]
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
    typer.echo(f"database at head: {settings.database_url.split('@')[-1]}")


@app.command()
def worker(
    concurrency: int = typer.Option(2, help="Worker processes (prefork) or threads."),
    pool: str = typer.Option("prefork", help="Celery pool: prefork, threads or solo."),
    queues: str = typer.Option("orders,webhooks", help="Queues to consume."),
) -> None:
    """Run a Celery worker: preview, submit, follow orders; deliver webhooks."""
    _logging()
    url = _export_redis_url()
    from worker.celery_app import configure

    celery = configure(url, _settings())
    import worker.tasks  # noqa: F401  (registers the tasks)

    celery.worker_main(
        [
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            queues,
            "-n",
            f"orders-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            _settings().log_level,
        ]
    )


@app.command()
def beat() -> None:
    """Run Celery beat: the sweeper every ORDERS_SWEEP_INTERVAL_S seconds."""
    _logging()
    url = _export_redis_url()
    settings = _settings()
    from worker.celery_app import configure

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
) -> None:
    """Run the HTTP intake API (FastAPI under uvicorn)."""
    _logging()
    _export_redis_url()
    import uvicorn

    uvicorn.run(
        "worker.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )


@app.command()
def stub(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(18080, help="Port to bind."),
) -> None:
    """Run the upstream stub (settings from STUB_* variables; see api_stub/config.py)."""
    from api_stub.server import run

    run(host=host, port=port)


@keys_app.command("create")
def keys_create(name: str) -> None:
    """Create a caller and print its new API key once, alone on the last line."""
    from worker.callers import create_caller
    from worker.db import transaction

    settings = _settings()
    with transaction(settings.database_url) as session:
        caller, key = create_caller(session, name)
    typer.echo(f"caller {caller.id} ({name}) created; its API key (shown once):", err=True)
    typer.echo(key)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        sys.exit(2)
