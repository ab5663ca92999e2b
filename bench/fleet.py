"""A whole deployment on this machine, for benchmarks: our own Redis and PostgreSQL, the stub,
API processes, worker "hosts", beat and a webhook pool, each a child process we can kill.

Nothing here touches a service it did not start: Redis and PostgreSQL are fresh instances on
free loopback ports (``OwnRedis``, ``OwnPostgres``), or URLs the caller gives; every process is
stopped by its PID (its own session), also on errors (``Fleet`` is a context manager).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from api_stub.testing import StubControl, free_port  # noqa: E402
from worker.embedded_redis import redis_binary  # noqa: E402

__all__ = ["Fleet", "OwnPostgres", "OwnRedis", "Proc", "wait_until"]


def wait_until(check: object, *, timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    """Call ``check()`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(poll_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


class Proc:
    """One child process in its own session (SIGKILL reaches its pool children too)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=out, cwd=REPO, start_new_session=True
            )
        self.starts += 1
        return self

    def kill(self, sig: int = signal.SIGKILL, wait_s: float = 15.0) -> None:
        """Send ``sig`` to the process group; SIGKILL what is left after ``wait_s``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(wait_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Pool children outliving their parent are still in our group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class OwnRedis:
    """A private ``redis-server`` on a free port: ours to restart and flush."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        self.proc = Proc("redis", argv, dict(os.environ), tmp / "redis.log")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: self.client().ping(), timeout_s=10, what="redis start")

    def restart(self, down_s: float = 1.0) -> None:
        """Kill it (everything in memory is lost, as in a crash), wait, start on the same port."""
        self.proc.kill(signal.SIGKILL)
        time.sleep(down_s)
        self.start()

    def flush(self) -> None:
        self.client().flushall()

    def stop(self) -> None:
        self.proc.kill(signal.SIGTERM, wait_s=5)


class OwnPostgres:
    """A private PostgreSQL cluster (``initdb`` in a temporary directory, trust auth, loopback)."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bin = found[-1].parent
        # Not under ``tmp`` (mode 0700, root's): the server may run as another user.
        self.dir = Path(tempfile.mkdtemp(prefix="orders-bench-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://root@127.0.0.1:{self.port}/orders"
        # initdb refuses root: run the server as the postgres user when we are root.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-o", opts,
                  "-l", str(self.dir / "server.log"), *args)  # fmt: skip

    def start(self) -> None:
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "root")
            self._ctl("start")
            self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                      "-U", "root", "orders")  # fmt: skip
        else:
            self._ctl("start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, as on a failover."""
        self._ctl("restart", "-m", "fast")

    def server_pids(self) -> list[int]:
        """The postmaster and its children (for CPU accounting)."""
        try:
            main = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        from bench.pipeline import proc_tree

        return proc_tree(main)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class Fleet:
    """API processes, worker hosts, beat and a webhook pool sharing one database and Redis.

    Args:
        tmp: Directory for homes and logs.
        db_url, redis_url: The services to use (already running, migrated by ``start``).
        stub_args: Options of ``python -m api_stub`` (a child process of ours).
        settings: Extra ``ORDERS_*`` variables for every process.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        db_url: str,
        redis_url: str,
        stub_args: list[str],
        settings: dict[str, str],
    ) -> None:
        self.tmp, self.db_url, self.redis_url = tmp, db_url, redis_url
        self.stub_port = free_port()
        self.stub_url = f"http://127.0.0.1:{self.stub_port}"
        stub_argv = [sys.executable, "-m", "api_stub", "--port", str(self.stub_port), *stub_args]
        self.stub_proc = Proc("stub", stub_argv, self._env("stub", {}), tmp / "stub.log")
        self.settings = settings
        self.apis: list[Proc] = []
        self.api_ports: list[int] = []
        self.hosts: list[Proc] = []
        self.beat: Proc | None = None
        self.webhooks: list[Proc] = []
        self.stub: StubControl | None = None

    def _env(self, home: str, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERS_", "STUB_"))}
        (self.tmp / home).mkdir(parents=True, exist_ok=True)
        env.update(
            {
                "ORDERS_DATABASE_URL": self.db_url,
                "ORDERS_REDIS_URL": self.redis_url,
                "ORDERS_UPSTREAM_URL": self.stub_url,
                "ORDERS_HOME": str(self.tmp / home),
                "ORDERS_LOG_LEVEL": "WARNING",
                "ORDERS_WEBHOOK_ALLOW_PRIVATE": "true",
                "PYTHONPATH": str(REPO),
                **extra,
            }
        )
        return env

    def _orders(self, name: str, home: str, args: list[str]) -> Proc:
        env = self._env(home, self.settings)
        argv = [sys.executable, "-m", "worker", *args]
        return Proc(name, argv, env, self.tmp / f"{name}.log")

    def start_stub(self) -> StubControl:
        self.stub_proc.start()
        self.stub = StubControl(self.stub_url)
        wait_until(lambda: self.stub.config(), timeout_s=20, what="stub start")  # type: ignore[union-attr]
        return self.stub

    def migrate(self) -> None:
        proc = self._orders("migrate", "api", ["migrate"])
        subprocess.run(proc.argv, env=proc.env, check=True, capture_output=True, timeout=120)

    def start(
        self,
        *,
        apis: int = 2,
        api_workers: int = 1,
        hosts: int = 2,
        concurrency: int = 2,
        webhook_concurrency: int = 2,
        nice: int = 0,
    ) -> None:
        """Start everything but the stub (``start_stub`` first); wait for the APIs to answer."""
        for i in range(apis):
            port = free_port()
            self.api_ports.append(port)
            args = ["api", "--port", str(port), "--workers", str(api_workers)]
            self.apis.append(self._orders(f"api-{i}", "api", args))
        for i in range(hosts):
            name = f"host-{'abcdefgh'[i]}"
            args = ["worker", "--queues", "orders", "--concurrency", str(concurrency)]
            args += ["--nice", str(nice)]
            self.hosts.append(self._orders(name, name, args))
        self.beat = self._orders("beat", "beat", ["beat"])
        if webhook_concurrency:
            args = ["worker", "--queues", "webhooks", "--concurrency", str(webhook_concurrency)]
            self.webhooks.append(self._orders("webhooks", "webhooks", args))
        for proc in self.processes():
            proc.start()
        for port in self.api_ports:
            self.wait_api(port)

    def processes(self) -> list[Proc]:
        """Every process of ours except the stub, Redis and PostgreSQL."""
        beat = [self.beat] if self.beat else []
        return [*self.apis, *self.hosts, *beat, *self.webhooks]

    def wait_api(self, port: int, timeout_s: float = 60) -> None:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: httpx.get(url).status_code == 200, timeout_s=timeout_s, what="api")

    def api_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.api_ports[i % len(self.api_ports)]}"

    def create_key(self, name: str) -> str:
        """``orders keys create NAME``: the key is the last line of its output."""
        proc = self._orders("keys", "api", ["keys", "create", name])
        done = subprocess.run(proc.argv, env=proc.env, check=True, capture_output=True, timeout=60)
        return done.stdout.decode().strip().splitlines()[-1]

    def stop_processes(self) -> None:
        """Stop APIs, hosts, beat and webhook pool (not the stub): ``start`` may follow."""
        for proc in self.processes():
            proc.stop()
        self.apis, self.api_ports, self.hosts, self.webhooks, self.beat = [], [], [], [], None

    def stop(self) -> None:
        self.stop_processes()
        if self.stub is not None:
            self.stub.close()
        self.stub_proc.stop()


@contextlib.contextmanager
def services(
    tmp: Path, *, own_postgres: bool, db_url: str | None = None
) -> Iterator[tuple[str, OwnRedis, OwnPostgres | None]]:
    """Our own Redis, and our own PostgreSQL unless ``db_url`` is given; stopped at exit."""
    own_redis = OwnRedis(tmp)
    pg = OwnPostgres() if own_postgres else None
    try:
        own_redis.start()
        if pg is not None:
            pg.start()
        url = pg.url if pg is not None else db_url
        if url is None:
            raise ValueError("no database: give db_url or own_postgres")
        yield url, own_redis, pg
    finally:
        own_redis.stop()
        if pg is not None:
            pg.stop()
