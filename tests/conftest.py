"""Shared fixtures: a real database (PostgreSQL or SQLite, by ORDERS_DATABASE_URL) and a real
Redis (a dedicated database, flushed per test).

- ``ORDERS_DATABASE_URL`` unset: a SQLite file in a temporary folder.
- ``ORDERS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``; if nothing answers there,
  a bundled redis-server is started for the session).
Each test starts from empty tables and an empty Redis database.

Under pytest-xdist (``-n``) every worker gets its own of both, so tests never meet across
workers: worker ``gwN`` uses the PostgreSQL database ``<name>_gwN`` (created when missing) and
the Redis database ``(index - ORDERS_TEST_REDIS_OFFSET - N) mod 16`` of the same server
(Celery's broadcasts are prefixed with the database index, so they stay apart too). SQLite
files are per session already.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql
from sqlalchemy import text

from worker import migrate
from worker.db import dispose_all, get_engine, transaction
from worker.ids import new_id, sha256_hex, utcnow
from worker.models import Base, Caller
from worker.settings import Settings, get_settings, normalise_database_url

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def _xdist_worker_number() -> int | None:
    """N for the xdist worker ``gwN`` running this process; None outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker.removeprefix("gw")) if worker.startswith("gw") else None


def redis_url_for_worker(url: str, number: int) -> str:
    """``url`` moved to the Redis database ``(index - offset - number) mod 16``, where the
    offset (``ORDERS_TEST_REDIS_OFFSET``, default 0) keeps two runs side by side apart."""
    parts = urlsplit(url)
    index = int(parts.path.strip("/") or 0) - int(os.environ.get("ORDERS_TEST_REDIS_OFFSET", "0"))
    return urlunsplit(parts._replace(path=f"/{(index - number) % 16}"))


def postgres_url_for_worker(url: str, number: int) -> str:
    """``url`` moved to the database ``<name>_gw<number>``, created from ``url`` when missing."""
    parts = urlsplit(url)
    name = f"{parts.path.strip('/')}_gw{number}"
    plain = url.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            # Another run may create it at the same moment.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(parts._replace(path=f"/{name}"))


def pytest_configure(config: pytest.Config) -> None:
    """Give an xdist worker its own PostgreSQL database (its Redis: ``redis_server_url``)."""
    number = _xdist_worker_number()
    if number is None:
        return
    db = os.environ.get("ORDERS_DATABASE_URL")
    if db and normalise_database_url(db).startswith("postgresql"):
        os.environ["ORDERS_DATABASE_URL"] = postgres_url_for_worker(
            normalise_database_url(db), number
        )


# The end-to-end runs (real worker processes, tests/integration/): one xdist group, so they run
# one after another on one worker while the others take the rest (several at once starve each
# other of the two cores and their timing checks fail); the longest carry the long timeout.
E2E_GROUP = ("test_chaos_short.py", "test_upstream_pushback.py", "test_console_browser.py")
LONG_TIMEOUT_S = 300


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the end-to-end modules; give ``long`` tests ``LONG_TIMEOUT_S`` instead of the
    default per-test timeout (pyproject's ``timeout``). With ``ORDERS_TEST_RAN_DB_FREE=1``
    (set by ``.ci/test`` for its second pass) the ``db_free`` tests, which bring their own
    services and ignore the pass's database, are deselected: they ran in the first pass."""
    if os.environ.get("ORDERS_TEST_RAN_DB_FREE") == "1":
        ran = [item for item in items if item.get_closest_marker("db_free")]
        if ran:
            config.hook.pytest_deselected(items=ran)
            items[:] = [item for item in items if not item.get_closest_marker("db_free")]
    for item in items:
        if item.path.parent.name == "integration":
            item.add_marker(pytest.mark.xdist_group("e2e"))
            # Real processes racing a SIGKILL or sampling a peak on two shared cores: one rerun
            # (reported as such); a failure twice in a row fails the run.
            item.add_marker(pytest.mark.flaky(reruns=1))
        if item.path.name in E2E_GROUP or item.path.name == "test_batch_approval_kill.py":
            item.add_marker(pytest.mark.long)
        if item.get_closest_marker("long") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S))


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A real Redis for the session: the configured one, else a bundled redis-server."""
    base = os.environ.get("ORDERS_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    url = redis_url_for_worker(base, _xdist_worker_number() or 0)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        if "ORDERS_TEST_REDIS_URL" in os.environ:
            raise
        from worker.embedded_redis import start

        proc, url = start()
        yield url
        proc.terminate()
        proc.wait(10)
        return
    yield url


@pytest.fixture(scope="session")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test database, migrated to head once per session."""
    url = os.environ.get("ORDERS_DATABASE_URL")
    if url:
        url = normalise_database_url(url)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'orders.db'}"
    migrate.downgrade(url, "base")
    migrate.upgrade(url)
    yield url
    dispose_all()


def _truncate(url: str) -> None:
    engine = get_engine(url)
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A real Redis database, flushed before and after the test."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    yield redis_server_url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def clean_db(db_url: str) -> str:
    """The test database, emptied for this test."""
    _truncate(db_url)
    return db_url


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, clean_db: str, redis_url: str, tmp_path: Path
) -> dict[str, str]:
    """ORDERS_* variables for this test (database, Redis, a private home); extend and
    call ``settings_from(env)`` or set them with monkeypatch before building objects."""
    values = {
        "ORDERS_DATABASE_URL": clean_db,
        "ORDERS_REDIS_URL": redis_url,
        "ORDERS_HOME": str(tmp_path / "home"),
        "ORDERS_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def settings_from(env: dict[str, str], **overrides: object) -> Settings:
    """Settings for the test environment plus explicit overrides (field names)."""
    base = {k.removeprefix("ORDERS_").lower(): v for k, v in env.items()}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def caller_id(clean_db: str) -> str:
    caller_id = new_id("clr")
    with transaction(clean_db) as session:
        session.add(
            Caller(
                id=caller_id,
                name="test-caller",
                key_hash=sha256_hex(caller_id),
                key_prefix="test",
                created_at=utcnow(),
            )
        )
    return caller_id
