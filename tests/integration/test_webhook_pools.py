"""Webhooks in their own pool of processes: a hanging receiver cannot hold up orders, the
``orders worker`` command supervises both pools, and a full run logs no secret."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select

from api_stub.testing import free_port, stub_process
from tests.helpers import new_payload, wait_for
from tests.integration.conftest import Cluster
from tests.integration.test_webhooks_e2e import SECRET, Receiver, _endpoint
from worker.db import transaction
from worker.models import WebhookAttempt, WebhookDelivery
from worker.queue.app import TASK_DELIVER, TASK_PROCESS

pytestmark = pytest.mark.slow


class Hanger:
    """Accepts connections, reads the request, never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def hanger() -> Iterator[Hanger]:
    server = Hanger()
    yield server
    server.close()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_a_hanging_receiver_does_not_delay_orders(cluster: Cluster, caller_id: str, hanger):
    """With a receiver that never answers (60 s deadline), every order still completes fast,
    while the webhook pool is still waiting on it."""
    cluster.env["ORDERS_WEBHOOK_TIMEOUT_S"] = "60"
    _endpoint(cluster.db_url, caller_id, hanger.url)
    proc = cluster.worker()
    cluster.beat()
    assert proc.popen is not None
    wait_for(lambda: len(_children(proc.popen.pid)) >= 2, timeout_s=30)  # both pools up
    ids = cluster.submit(caller_id, [new_payload(i) for i in range(30)])
    orders = cluster.wait_settled(ids, timeout_s=30)
    assert {o.status for o in orders.values()} == {"complete"}
    # The webhook pool is (or soon will be) stuck on the receiver, with nothing recorded.
    wait_for(lambda: bool(hanger.held), timeout_s=30)
    with transaction(cluster.db_url) as session:
        attempts = session.scalars(select(WebhookAttempt)).all()
    assert attempts == []


def test_the_worker_command_exits_when_a_pool_dies(cluster: Cluster):
    """``orders worker`` runs an orders pool and a webhooks pool; killing one makes the command
    exit non-zero (for its supervisor to restart it)."""
    proc = cluster.worker()
    assert proc.popen is not None
    wait_for(lambda: len(_children(proc.popen.pid)) >= 2, timeout_s=30)  # both pools up
    pools = _children(proc.popen.pid)
    cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in pools]
    assert sorted(c[c.index(b"--queues") + 1] for c in cmdlines) == [b"orders", b"webhooks"]
    webhook_pool = pools[[c[c.index(b"--queues") + 1] for c in cmdlines].index(b"webhooks")]
    os.kill(webhook_pool, signal.SIGKILL)
    code = proc.popen.wait(60)
    assert code != 0
    assert not any(Path(f"/proc/{p}").exists() for p in pools if p != webhook_pool)


@pytest.mark.long
def test_a_full_run_logs_no_secret(cluster_env: dict[str, str], caller_id: str, tmp_path: Path):
    """Intake, worker and webhook delivery at DEBUG: no log line holds the upstream client
    secret, a bearer token, the caller key, the whsec_ secret or the webhook URL's credentials."""
    client_secret = "upstream-s3cret-value"
    with (
        stub_process(["--complete-after-s", "0.2", "--client-secret", client_secret]) as stub,
        Receiver() as receiver,
    ):
        env = dict(cluster_env)
        env.update(
            {
                "ORDERS_UPSTREAM_URL": stub,
                "ORDERS_UPSTREAM_CLIENT_SECRET": client_secret,
                "ORDERS_LOG_LEVEL": "DEBUG",
            }
        )
        cluster = Cluster(env, stub, tmp_path)
        try:
            from tests.api.conftest import make_caller

            key = make_caller(cluster.db_url, "logged").key
            port = free_port()
            cluster._orders("api", "--port", str(port))
            cluster.worker()
            cluster.beat()
            api = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            wait_for(lambda: _up(api), timeout_s=30)
            hook = receiver.url.replace("http://", "http://hookuser:hookpass@") + "?token=qtok"
            created = api.post("/v1/webhook-endpoints", json={"url": hook})
            assert created.status_code == 201, created.text
            whsec = created.json()["secret"]
            # The receiver verifies with the module's SECRET: give the endpoint that one.
            _use_secret(cluster.db_url, created.json()["id"])
            answer = api.post("/v1/orders/batch", json={"orders": [new_payload(1), new_payload(2)]})
            assert answer.status_code == 202, answer.text
            ids = [r["order"]["id"] for r in answer.json()["results"]]
            cluster.wait_settled(ids, timeout_s=60)
            wait_for(lambda: _delivered(cluster.db_url) >= 8, timeout_s=40)
            tokens = _bearer_tokens(env["ORDERS_REDIS_URL"])
            assert tokens, "no upstream token was cached"
        finally:
            cluster.close()
    logs = "\n".join(p.log.read_text(errors="replace") for p in cluster.procs)
    # The search below means something only if the logs hold the run: both tasks at work.
    for task in (TASK_PROCESS, TASK_DELIVER):
        assert f"Task {task}[" in logs, f"no log line of the {task} task"
    for secret in [client_secret, key, whsec, SECRET, "hookpass", "qtok", *tokens]:
        leaked = [line for line in logs.splitlines() if secret in line]
        assert not leaked, f"{secret[:6]}... appears in the logs: {leaked[:2]}"


def _up(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _use_secret(db_url: str, endpoint_id: str) -> None:
    from sqlalchemy import update

    from worker.models import WebhookEndpoint

    with transaction(db_url) as session:
        session.execute(
            update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(secret=SECRET)
        )


def _delivered(db_url: str) -> int:
    with transaction(db_url) as session:
        statuses = session.scalars(select(WebhookDelivery.status)).all()
    return sum(s == "delivered" for s in statuses)


def _bearer_tokens(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    values = [client.get(k) for k in client.keys("orders:upstream-token:*")]
    return [json.loads(v)["value"] for v in values if v]
