"""The console in a real browser (Playwright driving the distribution's Chromium) against real
``orders api``, ``orders worker`` and ``orders beat`` processes, the stub, Redis and the
database. Each run saves a screenshot of every page under ``docs/console/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_stub.testing import free_port
from tests.api.conftest import make_caller
from tests.helpers import new_payload, wait_for
from tests.integration.conftest import REPO, Cluster

CHROMIUM = os.environ.get("ORDERS_TEST_CHROMIUM", "/usr/bin/chromium")
SHOTS = REPO / "docs" / "console"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() or shutil.which("chromium")),
        reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it)",
    ),
]


@pytest.fixture
def served(cluster: Cluster) -> Iterator[str]:
    """``orders api`` as a process next to the cluster's worker and beat; its base URL."""
    port = free_port()
    cluster._orders("api", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("orders api did not start")
        time.sleep(0.2)
    cluster.worker()
    cluster.beat()
    yield base


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: the PostgreSQL and SQLite passes run side by side.
    partial = SHOTS / f".{name}.{os.getpid()}.png"
    page.screenshot(path=str(partial), full_page=True)
    os.replace(partial, SHOTS / f"{name}.png")


def sign_in(page: Any, base: str, key: str) -> None:
    page.goto(f"{base}/console/login")
    page.fill("input[name=key]", key)
    page.click("text=Sign in >> nth=-1")


def wait_status(page: Any, url: str, wanted: str, timeout_s: float = 60) -> None:
    """Reload the order page until its status badge reads ``wanted``."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.goto(url)
        if page.inner_text("h1 .st") == wanted:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{url} never reached {wanted}: {page.inner_text('h1')}")
        time.sleep(0.5)


def orders_cli(cluster: Cluster, base: str, key: str, *args: str) -> str:
    env = {**cluster.env, "ORDERS_API_URL": base, "ORDERS_API_KEY": key}
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def cluster_env(cluster_env: dict[str, str]) -> dict[str, str]:
    """Orders fail fast on a 502 storm (2 attempts) and reconciliation gives up fast."""
    cluster_env["ORDERS_RETRY_MAX_ATTEMPTS"] = "2"
    cluster_env["ORDERS_RECONCILE_MAX_PAGES"] = "1"
    return cluster_env


def test_operator_retries_a_502_storm_to_complete(
    cluster: Cluster, served: str, page: Any, clean_db: str
) -> None:
    """Sign in (a caller key is refused), see the failed 502 orders, dry-run the retry by
    reason and see the count, retry, and watch an order reach complete under the operator."""
    caller = make_caller(clean_db, "acme")
    operator = make_caller(clean_db, "olga", role="operator")
    # One order the upstream created first: with previews failing for everyone, the breaker
    # opens and only its read probe (a 2xx) lets the failing orders spend their own attempts.
    [good] = cluster.submit(caller.id, [new_payload(100)])
    assert cluster.wait_settled([good])[good].status == "complete"
    cluster.stub.script("preview", [{"status": 502, "times": 1000}])
    ids = cluster.submit(caller.id, [new_payload(i) for i in range(4)])
    orders = cluster.wait_settled(ids)
    assert {(o.status, o.reason) for o in orders.values()} == {("failed", "upstream_502")}
    cluster.stub.clear_script()

    sign_in(page, served, caller.key)
    assert "only operator keys" in page.inner_text(".flash.err")
    sign_in(page, served, operator.key)
    page.wait_for_url("**/console/overview")
    assert page.inner_text("a[href='/console/orders?status=failed']") == "4"
    shot(page, "overview")

    page.click("text=Needs attention")
    row = page.locator("#failed-groups tr[data-reason=upstream_502]")
    assert row.locator("td.num").inner_text() == "4"
    shot(page, "attention-failed")
    printed = orders_cli(
        cluster, served, caller.key, "retry", "--reason", "upstream_502", "--dry-run"
    )
    assert printed.splitlines()[0] == "would retry: 4 (dry run: nothing scheduled)"

    row.locator("text=Retry group…").click()
    assert page.inner_text("#matched") == "4"
    shot(page, "retry-dry-run")
    page.click("#confirm-retry")
    assert page.inner_text(".flash.ok") == "Retry scheduled for 4 orders."

    order_url = f"{served}/console/orders/{ids[0]}"
    wait_status(page, order_url, "complete")
    assert "operator:olga" in page.inner_text(".timeline")
    shot(page, "order")
    page.goto(f"{served}/console/orders?status=complete")
    shot(page, "orders")
    page.goto(f"{served}/console/batches")
    shot(page, "batches")
    page.goto(f"{served}/console/callers")
    assert caller.key not in page.content()
    shot(page, "callers")
    wait_for(
        lambda: {o.status for o in cluster.wait_settled(ids).values()} == {"complete"},
        timeout_s=60,
    )


def test_operator_resolves_held_orders_both_ways(
    cluster: Cluster, served: str, page: Any, clean_db: str
) -> None:
    """Three ambiguous submits are held: one found upstream (checked, then complete), one not
    created (re-submitted, then complete), one resolved with ``orders resolve``; a form
    posted without the session's CSRF token is refused."""
    caller = make_caller(clean_db, "acme")
    operator = make_caller(clean_db, "olga", role="operator")
    cluster.stub.script(
        "submit",
        [{"kind": "ambiguous", "hold_s": 3}, {"kind": "timeout", "hold_s": 3, "times": 2}],
    )
    cluster.stub.script("list", [{"status": 404, "times": 50}])
    ids = cluster.submit(caller.id, [new_payload(i) for i in range(3)])
    held = cluster.wait_settled(ids)
    assert {(o.status, o.reason) for o in held.values()} == {
        ("submit_unknown", "held_for_operator")
    }
    # "Not created" looks upstream again first: the order list must answer from here on.
    cluster.stub.clear_script()
    created = {o["external_id"]: o["id"] for o in cluster.stub.orders()["orders"]}
    [found] = [i for i in ids if held[i].payload["external_id"] in created]
    not_created = [i for i in ids if i != found]

    sign_in(page, served, operator.key)
    page.goto(f"{served}/console/attention")
    shot(page, "attention-held")
    # Another order's upstream id is refused: its external_id is not the one we sent.
    other_order = created[held[found].payload["external_id"]]
    row = page.locator(f"#held tr[data-order={not_created[0]}]")
    row.locator("input[name=upstream_id]").fill(other_order)
    row.locator("text=Found upstream").click()
    assert "not the same order" in page.inner_text(".flash.err")

    row = page.locator(f"#held tr[data-order={found}]")
    row.locator("input[name=upstream_id]").fill(created[held[found].payload["external_id"]])
    row.locator("text=Found upstream").click()
    assert "found upstream as" in page.inner_text(".flash.ok")
    page.locator(f"#held tr[data-order={not_created[0]}]").locator("text=Not created").click()
    assert "re-submitting" in page.inner_text(".flash.ok")
    printed = orders_cli(cluster, served, operator.key, "resolve", not_created[1], "--not-created")
    assert printed.startswith(f"{not_created[1]}: previewed")

    for order_id in ids:
        wait_status(page, f"{served}/console/orders/{order_id}", "complete")
        assert "operator:olga" in page.inner_text(".timeline")
    assert not cluster.stub.orders()["duplicates"]

    # A cross-site form: the session cookie would not even be sent (SameSite=Strict); with it
    # but without the token, the action is still refused.
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    forged = httpx.post(
        f"{served}/console/retry", data={"status": "failed"}, cookies=cookies, timeout=5
    )
    assert forged.status_code == 403
    page.goto(f"{served}/console/webhooks")
    shot(page, "webhooks")
