"""The bundled Redis: one per ORDERS_HOME even when commands start at the same moment, and a
dead one recorded in ``redis.url`` is replaced. Real processes and real redis-servers; every
server is stopped by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import redis

from api_stub.testing import free_port
from worker.embedded_redis import URL_FILE, resolve_redis_url
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
RESOLVE = """
import sys
from worker.embedded_redis import resolve_redis_url
from worker.settings import Settings
print(resolve_redis_url(Settings(home=sys.argv[1])), flush=True)
sys.stdin.read()  # stay up (and keep a server we started) until the test closes stdin
"""


def _redis_servers_under(pids: list[int]) -> list[psutil.Process]:
    servers = []
    for pid in pids:
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        servers += [c for c in children if "redis-server" in " ".join(c.cmdline())]
    return servers


def test_commands_starting_together_share_one_bundled_redis(tmp_path: Path) -> None:
    """Five processes resolving at once (no ORDERS_REDIS_URL) get one URL; one server runs."""
    env = {k: v for k, v in os.environ.items() if k != "ORDERS_REDIS_URL"}
    env["PYTHONPATH"] = str(REPO)
    home = tmp_path / "home"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RESOLVE, str(home)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    servers: list[psutil.Process] = []
    try:
        urls = {p.stdout.readline().strip() for p in procs}  # type: ignore[union-attr]
        servers = _redis_servers_under([p.pid for p in procs])
        assert len(urls) == 1 and next(iter(urls)).startswith("redis://127.0.0.1:")
        assert len(servers) == 1
        assert (home / URL_FILE).read_text().strip() in urls
        assert redis.Redis.from_url(next(iter(urls))).ping()
    finally:
        for proc in procs:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(15)
        for server in servers:
            if server.is_running():
                os.kill(server.pid, signal.SIGKILL)


def test_a_dead_server_in_redis_url_is_replaced_on_its_port(tmp_path: Path) -> None:
    """``redis.url`` naming a server that is gone: a new one is started on the same port."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / URL_FILE).write_text(f"redis://127.0.0.1:{port}/0")
    before = {c.pid for c in psutil.Process().children()}
    url = resolve_redis_url(Settings(home=home))
    started = [c for c in psutil.Process().children() if c.pid not in before]
    try:
        assert url == f"redis://127.0.0.1:{port}/0"
        assert redis.Redis.from_url(url).ping()
        assert (home / URL_FILE).read_text().strip() == url
        assert len(started) == 1
    finally:
        for child in started:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(5)
