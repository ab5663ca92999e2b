"""``orders keys create | list | revoke | rotate`` as real commands, and what the API makes of
the keys: a revoked or rotated key is refused within seconds by every app (each has its own
cache); operator keys and caller keys never stand in for each other."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.api.conftest import make_caller
from worker.api.auth import CACHE_S
from worker.db import transaction
from worker.ids import utcnow
from worker.intake.callers import touch
from worker.models import Caller

REPO = Path(__file__).resolve().parents[2]
MISSING = "ord_00000000000000000000000000000000"


def orders(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``orders ARGS`` as a child process with the test's ORDERS_* variables."""
    import os

    child_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def refused_by_all(clients: list[TestClient], key: str, bound_s: float) -> float:
    """Seconds until every client answers 401 to ``key``; fails past ``bound_s``."""
    started = time.monotonic()
    while True:
        codes = [c.get(f"/v1/orders/{MISSING}", headers=bearer(key)).status_code for c in clients]
        if all(code == 401 for code in codes):
            return time.monotonic() - started
        assert time.monotonic() - started < bound_s, f"still accepted after {bound_s} s: {codes}"
        time.sleep(0.1)


def test_duplicate_name_is_one_line_and_exit_1(env: dict[str, str]) -> None:
    """A second ``keys create`` with the same name: one clear line, exit 1, no traceback."""
    first = orders(env, "keys", "create", "acme")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1].startswith("ok_")
    second = orders(env, "keys", "create", "acme")
    assert second.returncode == 1
    assert second.stdout == ""
    assert second.stderr.strip().splitlines() == [
        "error: a key named 'acme' already exists (see `orders keys list`)"
    ]


@pytest.mark.long
def test_revoked_key_is_refused_by_every_app_within_seconds(
    env: dict[str, str], api: Callable[..., TestClient]
) -> None:
    """Two apps (two caches) that have just accepted a key both refuse it within the cache
    bound after ``orders keys revoke``; its other keys and callers are unaffected."""
    created = orders(env, "keys", "create", "acme")
    key = created.stdout.strip().splitlines()[-1]
    other = make_caller(env["ORDERS_DATABASE_URL"], "other")
    apps = [api(), api()]
    for app in apps:
        assert app.get(f"/v1/orders/{MISSING}", headers=bearer(key)).status_code == 404
    revoked = orders(env, "keys", "revoke", "acme")
    assert revoked.returncode == 0, revoked.stderr
    waited_s = refused_by_all(apps, key, bound_s=CACHE_S + 1.5)
    assert waited_s <= CACHE_S + 1.5
    assert apps[0].get(f"/v1/orders/{MISSING}", headers=other.headers).status_code == 404
    listed = orders(env, "keys", "list")
    row = next(line for line in listed.stdout.splitlines() if "acme" in line)
    assert "caller" in row and row.count(utcnow().strftime("%Y-%m-%d")) >= 2  # created, revoked
    assert orders(env, "keys", "revoke", "nobody").returncode == 1
    rotated = orders(env, "keys", "rotate", "acme")
    assert rotated.returncode == 1 and "revoked" in rotated.stderr


def test_rotate_prints_a_new_key_and_the_old_one_stops_working(
    env: dict[str, str], api: Callable[..., TestClient]
) -> None:
    """``keys rotate``: the new key is the last line and works; the old one is refused."""
    old = orders(env, "keys", "create", "acme").stdout.strip().splitlines()[-1]
    apps = [api(), api()]
    for app in apps:
        assert app.get(f"/v1/orders/{MISSING}", headers=bearer(old)).status_code == 404
    rotated = orders(env, "keys", "rotate", "acme")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    assert new.startswith("ok_") and new != old
    refused_by_all(apps, old, bound_s=CACHE_S + 1.5)
    for app in apps:
        assert app.get(f"/v1/orders/{MISSING}", headers=bearer(new)).status_code == 404


def test_operator_and_caller_keys_never_stand_in_for_each_other(
    env: dict[str, str], client: TestClient
) -> None:
    """An operator key is refused on /v1 (401) and opens /metrics; a caller key is refused
    on /metrics (403); no key: 401."""
    created = orders(env, "keys", "create", "ops", "--operator")
    assert created.returncode == 0, created.stderr
    operator_key = created.stdout.strip().splitlines()[-1]
    caller = make_caller(env["ORDERS_DATABASE_URL"], "acme")
    assert client.get(f"/v1/orders/{MISSING}", headers=bearer(operator_key)).status_code == 401
    assert client.get("/v1/orders", headers=bearer(operator_key)).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=caller.headers).status_code == 403
    response = client.get("/metrics", headers=bearer(operator_key))
    assert response.status_code == 200 and "orders_http_requests_total" in response.text
    listed = orders(env, "keys", "list").stdout
    assert "operator" in next(line for line in listed.splitlines() if "ops" in line)


def test_last_used_is_written_at_most_once_per_interval(
    env: dict[str, str], client: TestClient
) -> None:
    """A used key gets ``last_used_at``; a touch within the interval writes nothing."""
    caller = make_caller(env["ORDERS_DATABASE_URL"], "acme")
    assert client.get(f"/v1/orders/{MISSING}", headers=caller.headers).status_code == 404
    db_url = env["ORDERS_DATABASE_URL"]
    deadline = time.monotonic() + 5
    while True:
        with transaction(db_url) as session:
            used_at = session.scalar(select(Caller.last_used_at).where(Caller.id == caller.id))
        if used_at is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert used_at is not None
    with transaction(db_url) as session:
        assert not touch(session, caller.id, now=used_at + timedelta(seconds=30), min_interval_s=60)
        assert touch(session, caller.id, now=used_at + timedelta(seconds=61), min_interval_s=60)


@pytest.fixture(autouse=True)
def _no_stray_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERS_API_KEY", raising=False)
