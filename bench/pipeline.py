"""Benchmark of the order pipeline end to end (not a test): orders/s from enqueue to ``complete``.

For each upstream latency (``--latency-ms 0,50``) and each worker configuration (the cross
product of ``--pool``, ``--concurrency``, ``--chunk-size``, ``--http-concurrency``), repeated
``--repeat`` times:

* NAIVE baseline (no worker running): a sequential loop over stored orders, each one preview +
  submit over one keep-alive ``httpx.Client`` and one status write (UPDATE + commit through
  SQLAlchemy on the same database). At 50 ms it is slow, so it runs on a sample
  (``--naive-orders``, default min(N, 2000) at 0 ms and 200 above).
* PIPELINE: ``python -m worker worker --pool P --concurrency C`` as a subprocess (its own
  session), warmed up with a few orders, then N orders are inserted in bulk
  (``worker.intake.store.create_orders``), enqueued in chunks of ORDERS_CHUNK_SIZE
  (``worker.queue.enqueue.enqueue_orders``), and the clock runs from the first publish until a COUNT
  of ``complete`` orders reaches N.

By default payloads carry ``process_immediately: true``: the stub answers ``complete`` to the
submit at once (two upstream calls per order). ``--follow`` sends ``process_immediately: false``:
the order is ``submitted`` and followed through GET until the stub says complete
(``--complete-after-s``, default 0.5), with GETs every ORDERS_FOLLOW_INTERVAL_S
(``--follow-interval-s``); the naive loop then GETs each order at that interval until complete.

Also reported per run: CPU per order of the worker processes, the stub (its own ``cpu_s`` from
``GET /_stub/stats``), PostgreSQL backends of the benchmark database and Redis; the machine's busy
share; the peak RSS (VmHWM) of each worker process. ``--rss-check`` instead runs the first
configuration at N = 2,000 and 20,000 (``--rss-sizes``) and compares peak RSS.

Every wait has a timeout; every process started here is stopped by its PID (process group of
the worker, which runs in its own session), also on Ctrl-C and errors.

Examples::

    python bench/pipeline.py --orders 5000 --latency-ms 0,50 --repeat 3
    python bench/pipeline.py --pool threads --concurrency 2,4,8 --repeat 1 --orders 2000
    python bench/pipeline.py --chunk-size 10,50,100 --http-concurrency 8,32,64 --repeat 1
    python bench/pipeline.py --rss-check --latency-ms 0
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import func, select, text, update  # noqa: E402

from api_stub.testing import StubControl, stub_process  # noqa: E402
from worker import migrate  # noqa: E402
from worker.db import dispose_all, get_engine, session_factory, transaction  # noqa: E402
from worker.ids import new_id, sha256_hex, utcnow  # noqa: E402
from worker.intake.checks import new_order  # noqa: E402
from worker.intake.store import create_orders  # noqa: E402
from worker.models import Base, Caller, Order  # noqa: E402
from worker.queue.app import configure  # noqa: E402
from worker.queue.enqueue import enqueue_orders  # noqa: E402
from worker.settings import Settings, normalise_database_url  # noqa: E402

PG_URL = "postgresql://root@127.0.0.1:5432/root"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")  # a scratch database
PREVIEW_PATH = "/api/partner/order/preview"
SUBMIT_PATH = "/api/partner/order"
TICK_S = os.sysconf("SC_CLK_TCK")
BAD_STATUSES = ("failed", "rejected", "submit_unknown", "cancelled")


# --------------------------------------------------------------------------- payloads, database


def code_version() -> str:
    """HEAD plus a hash of worker/**/*.py as they are now (the tree is edited under us)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "worker").rglob("*.py")):
        digest.update(path.read_bytes())
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "worker"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.count("\n")
    return f"HEAD {head or '?'}, worker/ sha256 {digest.hexdigest()[:12]} ({dirty} changed files)"


def previews_until(http: httpx.Client, stop: float, latencies: list[float] | None = None) -> int:
    """Previews over ``http`` one after another until ``stop`` (``time.monotonic``); returns
    how many answered 200 (and appends each call's seconds to ``latencies``)."""
    ok = i = 0
    while time.monotonic() < stop:
        started = time.perf_counter()
        response = http.post(PREVIEW_PATH, json=payload(i, True))
        if latencies is not None:
            latencies.append(time.perf_counter() - started)
        i += 1
        ok += response.status_code == 200
    return ok


def payload(n: int, immediately: bool) -> dict[str, Any]:
    """A valid ``new`` order payload (as tests/helpers.new_payload)."""
    return {
        "order_type": "new",
        "external_id": f"EXT-{n}",
        "process_immediately": immediately,
        "checkoutId": f"basket-{n}",
        "country": "GB",
        "orderItems": [{"offer": {"id": "a" * 40, "version": "b" * 40}, "quantity": 1}],
        "billingDetails": {"firstName": "Ada", "lastName": "Lovelace", "email": "a@example.com"},
        "payment": {"type": "zuora", "zuora": {"refId": "r1"}},
    }


class Db:
    """The benchmark database: migrated once, emptied before every run."""

    def __init__(self, url: str) -> None:
        self.url = normalise_database_url(url)
        migrate.upgrade(self.url)
        self.caller_id = ""
        self._seq = itertools.count()

    @property
    def is_pg(self) -> bool:
        return self.url.startswith("postgresql")

    def reset(self) -> None:
        engine = get_engine(self.url)
        tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
        with engine.begin() as conn:
            if self.is_pg:
                conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            else:
                for name in tables:
                    conn.execute(text(f"DELETE FROM {name}"))
        self.caller_id = new_id("clr")
        with transaction(self.url) as session:
            session.add(
                Caller(
                    id=self.caller_id,
                    name="bench",
                    key_hash=sha256_hex(self.caller_id),
                    key_prefix="bench",
                    created_at=utcnow(),
                )
            )

    def add(
        self, n: int, batch_id: str, immediately: bool, *, due_in_s: float = 3600
    ) -> tuple[list[str], float]:
        """Insert ``n`` received orders in bulk; returns their ids and the seconds it took.

        ``due_in_s``: when the dispatcher may take them (the default keeps them for a bench
        that enqueues them itself; 0 leaves them to the dispatcher, as the intake does)."""
        started = time.perf_counter()
        ids: list[str] = []
        for start in range(0, n, 5000):
            items = [
                new_order(payload(next(self._seq), immediately))
                for _ in range(min(5000, n - start))
            ]
            with transaction(self.url) as session:
                orders = create_orders(
                    session,
                    self.caller_id,
                    items,
                    now=utcnow(),
                    due_in_s=due_in_s,
                    batch_id=batch_id,
                )
            ids.extend(o.id for o in orders)
        return ids, time.perf_counter() - started

    def counts(self, batch_id: str) -> dict[str, int]:
        with transaction(self.url) as session:
            rows = session.execute(
                select(Order.status, func.count())
                .where(Order.batch_id == batch_id)
                .group_by(Order.status)
            )
            return {status: n for status, n in rows}

    def complete_count(self, batch_id: str) -> int:
        with transaction(self.url) as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        Order.batch_id == batch_id, Order.status.in_(("complete", *BAD_STATUSES))
                    )
                )
                or 0
            )

    def backend_pids(self) -> list[int]:
        if not self.is_pg:
            return []
        with transaction(self.url) as session:
            return [
                int(p)
                for p in session.scalars(
                    text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
                )
            ]


# --------------------------------------------------------------------------- /proc accounting


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK_S


def proc_mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB; zeros if the process is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def proc_tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class MemSampler:
    """Samples VmRSS/VmHWM of a process tree every ``interval_s`` in a thread."""

    def __init__(self, root: int, interval_s: float = 0.5) -> None:
        self.root = root
        self.interval_s = interval_s
        self.hwm_kb: dict[int, int] = {}
        self.rss_kb: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="mem-sampler")

    def sample(self) -> None:
        for pid in proc_tree(self.root):
            rss, hwm = proc_mem_kb(pid)
            if hwm:
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
                self.rss_kb.setdefault(pid, []).append(rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> MemSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def marks(self) -> dict[int, int]:
        """Current RSS per pid (kB), for before/after comparisons."""
        return {pid: values[-1] for pid, values in self.rss_kb.items() if values}


class CpuMeter:
    """CPU seconds of named groups of processes between ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._before: dict[int, float] = {}
        self.used_s: dict[str, float] = {}
        self.machine = (0.0, 0.0)

    def start(self) -> None:
        self._before = {p: proc_cpu_s(p) for pids in self.groups.values() for p in pids}
        self._m0 = machine_cpu()

    def stop(self, groups: dict[str, list[int]] | None = None) -> None:
        groups = groups or self.groups
        m1 = machine_cpu()
        self.machine = (m1[0] - self._m0[0], m1[1] - self._m0[1])
        for name, pids in groups.items():
            self.used_s[name] = sum(
                max(0.0, proc_cpu_s(p) - self._before.get(p, 0.0)) for p in pids
            )

    def busy_share(self) -> float:
        return self.machine[0] / self.machine[1] if self.machine[1] else 0.0


# --------------------------------------------------------------------------- worker processes


class WorkerProc:
    """``python -m worker worker`` in its own session; stopped by its PID (process group)."""

    def __init__(self, pool: str, concurrency: int, env: dict[str, str], log: Path) -> None:
        self.args = [
            sys.executable,
            "-m",
            "worker",
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--queues",
            "orders",
        ]
        self.env, self.log = env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=out, start_new_session=True, cwd=REPO
            )
        _STARTED.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM to our process group, SIGKILL if still there after 15 s."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Pool children left behind (the group is ours: same pgid as our child's pid).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        _STARTED.discard(self)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


_STARTED: set[WorkerProc] = set()


def _on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None) -> Iterator[None]:
    """Sample ``pid`` and its children with py-spy (GIL-holding stacks, collapsed, to ``out``)."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--format", "raw"]
    cmd += ["--rate", "200", "--gil", "--nonblocking", "--output", str(out)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attach before the clock starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


PHASES = (
    (
        "Pipeline.run: load + claim (first transaction)",
        ("load (worker/repository.py", "claim (worker/repository.py"),
    ),
    (
        "Pipeline._apply: status writes (apply_moves*, events)",
        ("Pipeline._apply (worker/pipeline/run.py",),
    ),
    ("  of which record_deliveries (webhook outbox query)", ("record_deliveries (",)),
    ("UpstreamClient._call: HTTP calls (wire + JSON)", ("UpstreamClient._call (",)),
    ("  of which the token", ("TokenCache.get (",)),
    ("ThreadPoolExecutor plumbing outside the calls", ("_worker (concurrent",)),
    ("Pipeline.run total", ("Pipeline.run (worker/pipeline/run.py",)),
    ("process_orders task (incl. requeue/enqueue)", ("process_orders (worker/queue/tasks.py",)),
    ("transaction(): session begin/commit/close", ("transaction (worker/db.py",)),
)


def _package(frame: str) -> str:
    path = frame.rsplit(" (", 1)[-1].split(":")[0] if " (" in frame else frame
    if "/" in path:
        return path.split("/", 1)[0]
    return "stdlib/other" if path.endswith(".py") or path.startswith("<") else path


def summarize_stacks(path: Path, top: int = 25) -> None:
    """Print a py-spy raw (collapsed) profile: phases, packages (self time), hottest functions.

    Stacks are those holding the GIL (``--gil``), i.e. Python CPU; one line per stack.
    """
    self_fn: dict[str, int] = {}
    self_pkg: dict[str, int] = {}
    phases = dict.fromkeys((name for name, _ in PHASES), 0)
    per_process: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        procs = [f for f in stack.split(";") if f.startswith("process ")]
        kind = "main process" if len(procs) == 1 else "pool children"
        per_process[kind] = per_process.get(kind, 0) + n
        leaf = frames[-1] if frames else "?"
        fn = leaf.split(":")[0] + ")" if " (" in leaf else leaf
        self_fn[fn] = self_fn.get(fn, 0) + n
        self_pkg[_package(leaf)] = self_pkg.get(_package(leaf), 0) + n
        for name, markers in PHASES:
            if any(m in f for f in frames for m in markers):
                phases[name] += n
    print(f"{path}: {total} GIL-holding samples")
    print(
        "  by process: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in per_process.items())
    )
    print("  inclusive share by phase:")
    for name, n in phases.items():
        print(f"    {100 * n / total:5.1f}%  {name}")
    print("  self time by package (innermost frame):")
    for pkg, n in sorted(self_pkg.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {100 * n / total:5.1f}%  {pkg}")
    print(f"  top {top} functions by self time:")
    for fn, n in sorted(self_fn.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / total:5.1f}%  {fn}")


# --------------------------------------------------------------------------- one configuration


@dataclass(frozen=True)
class Config:
    pool: str
    concurrency: int
    chunk: int
    http: int

    def label(self) -> str:
        conc = "-" if self.pool == "solo" else str(self.concurrency)
        return f"{self.pool:<8} c={conc:<2} chunk={self.chunk:<3} http={self.http:<3}"

    def slug(self) -> str:
        return f"{self.pool}{self.concurrency}-chunk{self.chunk}-http{self.http}"

    def processes(self) -> int:
        return self.concurrency if self.pool == "prefork" else 1


@dataclass
class RunResult:
    rate: float
    n: int
    elapsed_s: float
    statuses: dict[str, int]
    cpu_ms: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0
    hwm_mb: list[float] = field(default_factory=list)
    rss_growth_mb: list[float] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    create_s: float = 0.0
    enqueue_s: float = 0.0
    error: str | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, db: Db, stub_url: str, tmp: Path) -> None:
        self.args, self.db, self.stub_url, self.tmp = args, db, stub_url, tmp
        self.stub = StubControl(stub_url)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.celery = configure(REDIS_URL, self._settings())
        self.stub_pid = int(self.stub.stats()["process"]["pid"])
        self.redis_pids = pids_named("redis-server")
        self.immediately = not args.follow

    def _settings(self) -> Settings:
        return Settings(database_url=self.db.url, redis_url=REDIS_URL, upstream_url=self.stub_url)

    def reset(self, latency_ms: float) -> None:
        self.db.reset()
        self.redis.flushdb()
        self.stub.reset()
        self.stub.configure(latency_ms=latency_ms, complete_after_s=self.args.complete_after_s)

    def env(self, cfg: Config) -> dict[str, str]:
        env = dict(os.environ)
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        env.update(
            {
                "ORDERS_DATABASE_URL": self.db.url,
                "ORDERS_REDIS_URL": REDIS_URL,
                "ORDERS_UPSTREAM_URL": self.stub_url,
                "ORDERS_HOME": str(home),
                "ORDERS_LOG_LEVEL": "WARNING",
                "ORDERS_CHUNK_SIZE": str(cfg.chunk),
                "ORDERS_HTTP_CONCURRENCY": str(cfg.http),
                "ORDERS_ENQUEUE_GRACE_S": "3600",
                "ORDERS_FOLLOW_INTERVAL_S": str(self.args.follow_interval_s),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            }
        )
        return env

    # ---------------------------------------------------------------- naive baseline

    def naive(self, latency_ms: float, n: int) -> RunResult:
        """Sequential: preview + submit (+ GETs with --follow) + one UPDATE/commit per order."""
        self.reset(latency_ms)
        ids, _ = self.db.add(n, "naive", self.immediately)
        with transaction(self.db.url) as session:
            rows = session.execute(select(Order.id, Order.payload).where(Order.id.in_(ids))).all()
        factory = session_factory(self.db.url)
        headers = {"Authorization": f"Bearer {self.stub.token()}"}
        self.db.complete_count("naive")  # a pooled connection, so its backend is counted
        cpu = CpuMeter(
            {"bench": [os.getpid()], "stub": [self.stub_pid], "postgres": self.db.backend_pids()}
        )
        deadline = time.monotonic() + self.args.timeout_s
        with httpx.Client(base_url=self.stub_url, headers=headers, timeout=10) as client:
            client.get("/_stub/config")  # open the keep-alive connection
            cpu.start()
            started = time.perf_counter()
            for order_id, body in rows:
                if time.monotonic() > deadline:
                    raise TimeoutError("naive loop over its time budget")
                client.post(PREVIEW_PATH, json=body).raise_for_status()
                answer = client.post(SUBMIT_PATH, json=body)
                answer.raise_for_status()
                upstream = answer.json()
                while str(upstream.get("status", "")).lower() not in ("complete", "failed"):
                    if time.monotonic() > deadline:
                        raise TimeoutError("naive follow over its time budget")
                    time.sleep(self.args.follow_interval_s)
                    got = client.get(f"/api/objects/limio/orders/{upstream['id']}")
                    got.raise_for_status()
                    upstream = {"id": upstream["id"], "status": got.json().get("orderState")}
                with factory() as session:
                    session.execute(
                        update(Order)
                        .where(Order.id == order_id)
                        .values(status="complete", upstream_id=upstream["id"], updated_at=utcnow())
                    )
                    session.commit()
            elapsed = time.perf_counter() - started
            cpu.stop()
        result = RunResult(len(rows) / elapsed, len(rows), elapsed, self.db.counts("naive"))
        result.cpu_ms = {k: v * 1000 / len(rows) for k, v in cpu.used_s.items()}
        result.busy = cpu.busy_share()
        return result

    # ---------------------------------------------------------------- the pipeline

    def _wait(self, batch: str, n: int, timeout_s: float, proc: WorkerProc) -> None:
        deadline = time.monotonic() + timeout_s
        while self.db.complete_count(batch) < n:
            if not proc.alive():
                raise RuntimeError(f"worker exited (code {proc.popen.returncode}):\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{batch}: not all {n} orders done in {timeout_s:.0f} s: "
                    f"{self.db.counts(batch)}\n{proc.tail()}"
                )
            time.sleep(self.args.poll_s)

    def pipeline(self, latency_ms: float, cfg: Config, n: int) -> RunResult:
        self.reset(latency_ms)
        log = self.tmp / f"worker-{cfg.pool}-{cfg.concurrency}-{cfg.chunk}-{cfg.http}.log"
        proc = WorkerProc(cfg.pool, cfg.concurrency, self.env(cfg), log).start()
        try:
            # Warm-up: imports, forks, token, connections in every process; not timed.
            warm = max(cfg.chunk * cfg.processes() * 2, 20)
            warm_ids, _ = self.db.add(warm, "warm", self.immediately)
            enqueue_orders(self.celery, warm_ids, chunk_size=cfg.chunk)
            self._wait("warm", warm, self.args.startup_timeout_s, proc)
            ids, create_s = self.db.add(n, "bench", self.immediately)
            spy = self.args.py_spy and self.args.py_spy / f"{latency_ms:.0f}ms-{cfg.slug()}-{n}.txt"
            with MemSampler(proc.pid) as mem, py_spy(proc.pid, spy):
                base_rss = mem.marks()
                groups = {
                    "worker": proc_tree(proc.pid),
                    "stub": [self.stub_pid],
                    "postgres": self.db.backend_pids(),
                    "redis": self.redis_pids,
                    "bench": [os.getpid()],
                }
                cpu = CpuMeter(groups)
                stub0 = self.stub.stats()
                cpu.start()
                started = time.perf_counter()
                enqueue_orders(self.celery, ids, chunk_size=cfg.chunk)
                enqueue_s = time.perf_counter() - started
                self._wait("bench", n, self.args.timeout_s, proc)
                elapsed = time.perf_counter() - started
                groups["worker"] = sorted(set(groups["worker"]) | set(proc_tree(proc.pid)))
                groups["postgres"] = sorted(set(groups["postgres"]) | set(self.db.backend_pids()))
                cpu.stop(groups)
                stub1 = self.stub.stats()
            end_rss = mem.marks()
        finally:
            proc.stop()
        statuses = self.db.counts("bench")
        result = RunResult(statuses.get("complete", 0) / elapsed, n, elapsed, statuses)
        result.cpu_ms = {k: v * 1000 / n for k, v in cpu.used_s.items()}
        result.busy = cpu.busy_share()
        result.hwm_mb = [mem.hwm_kb[p] / 1024 for p in sorted(mem.hwm_kb)]
        result.rss_growth_mb = [
            (end_rss.get(p, 0) - base_rss[p]) / 1024 for p in sorted(base_rss) if p in end_rss
        ]
        result.requests = {k: v - stub0["requests"].get(k, 0) for k, v in stub1["requests"].items()}
        result.requests["401"] = stub1["unauthorized"] - stub0["unauthorized"]
        result.create_s, result.enqueue_s = create_s, enqueue_s
        return result


# --------------------------------------------------------------------------- reporting


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt_cpu(results: list[RunResult]) -> str:
    keys = results[0].cpu_ms.keys()
    return " ".join(f"{k} {_med([r.cpu_ms.get(k, 0) for r in results]):.2f}" for k in keys)


def describe(kind: str, latency: float, label: str, results: list[RunResult]) -> str:
    rates = [r.rate for r in results]
    spread = f"[{min(rates):.0f}-{max(rates):.0f}]" if len(rates) > 1 else ""
    line = (
        f"  {kind:<8} {latency:>4.0f} ms  {label:<38} {_med(rates):8.1f} orders/s {spread:<11}"
        f" n={results[0].n}  cpu ms/order: {_fmt_cpu(results)}"
        f"  machine busy {_med([r.busy for r in results]) * 100:.0f}%"
    )
    if kind == "pipeline":
        hwm = max(max(r.hwm_mb) for r in results)
        procs = len(results[0].hwm_mb)
        line += f"  peak RSS {hwm:.0f} MB (max over runs of {procs} procs: main + children)"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--latency-ms", default="0,50")
    parser.add_argument("--pool", default="prefork", help="comma list: prefork,threads,solo")
    parser.add_argument("--concurrency", default="4", help="comma list")
    parser.add_argument("--chunk-size", default="50", help="comma list (ORDERS_CHUNK_SIZE)")
    parser.add_argument("--http-concurrency", default="64", help="ORDERS_HTTP_CONCURRENCY list")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--db-url", default=PG_URL)
    parser.add_argument("--follow", action="store_true", help="process_immediately: false")
    parser.add_argument(
        "--complete-after-s",
        type=float,
        default=None,
        help="stub: a queued order settles after this (default 0.5 with --follow, else 0)",
    )
    parser.add_argument("--follow-interval-s", type=float, default=2.0)
    parser.add_argument(
        "--naive-orders",
        default="",
        help="orders for the naive loop per latency (comma list); default min(N,2000) at 0 ms, "
        "200 otherwise; 0 skips it",
    )
    parser.add_argument("--rss-check", action="store_true")
    parser.add_argument("--rss-sizes", default="2000,20000")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per timed run")
    parser.add_argument("--startup-timeout-s", type=float, default=90.0)
    parser.add_argument("--poll-s", type=float, default=0.1)
    parser.add_argument("--py-spy", type=Path, help="directory: profile each timed worker run")
    parser.add_argument("--summarize", type=Path, nargs="+", help="print a py-spy raw profile")
    args = parser.parse_args(argv)
    if args.summarize:
        for path in args.summarize:
            summarize_stacks(path)
        return 0

    if args.complete_after_s is None:
        args.complete_after_s = 0.5 if args.follow else 0.0
    latencies = [float(v) for v in args.latency_ms.split(",")]
    configs = list(
        dict.fromkeys(
            Config(p, 1 if p == "solo" else int(c), int(k), int(h))
            for p, c, k, h in itertools.product(
                args.pool.split(","),
                args.concurrency.split(","),
                args.chunk_size.split(","),
                args.http_concurrency.split(","),
            )
        )
    )
    if args.naive_orders:
        naive_n = [int(v) for v in args.naive_orders.split(",")]
        naive_n += [naive_n[-1]] * (len(latencies) - len(naive_n))
    else:
        naive_n = [min(args.orders, 2000) if lat == 0 else 200 for lat in latencies]

    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    db_url = f"sqlite:///{tmp / 'orders.db'}" if args.db == "sqlite" else args.db_url
    db = Db(db_url)
    mode = (
        "process_immediately=false: submit answers 'submitted', orders followed through GET "
        f"(stub complete_after_s={args.complete_after_s}, ORDERS_FOLLOW_INTERVAL_S="
        f"{args.follow_interval_s})"
        if args.follow
        else "process_immediately=true: the stub answers 'complete' to the submit at once "
        "(2 upstream calls per order, no follow-up)"
    )
    print(f"db {db.url.split('@')[-1]}  redis {REDIS_URL}  cores {os.cpu_count()}  logs {tmp}")
    print(f"code: {code_version()}")
    print(f"payloads: {mode}")
    print("cpu ms/order: CPU seconds of each process group during the timed window / orders")
    sys.stdout.flush()
    naive: dict[float, list[RunResult]] = {lat: [] for lat in latencies}
    piped: dict[tuple[float, Config], list[RunResult]] = {}
    try:
        with stub_process(["--latency-ms", "0"]) as stub_url:
            bench = Bench(args, db, stub_url, tmp)
            if args.rss_check:
                cfg = configs[0]
                for n in (int(v) for v in args.rss_sizes.split(",")):
                    r = bench.pipeline(latencies[0], cfg, n)
                    print(
                        f"rss-check {latencies[0]:.0f} ms {cfg.label()} N={n:>6}: "
                        f"{r.rate:7.1f} orders/s  peak RSS per process (VmHWM) "
                        f"{', '.join(f'{m:.0f}' for m in r.hwm_mb)} MB; RSS change over the run "
                        f"{', '.join(f'{m:+.1f}' for m in r.rss_growth_mb)} MB",
                        flush=True,
                    )
                return 0
            for rep in range(args.repeat):
                for lat, nn in zip(latencies, naive_n, strict=True):
                    if nn:
                        r = bench.naive(lat, nn)
                        naive[lat].append(r)
                        print(
                            f"[{rep + 1}] naive    {lat:>4.0f} ms  {r.rate:8.1f} orders/s "
                            f"({r.n} in {r.elapsed_s:.1f} s)",
                            flush=True,
                        )
                    for cfg in configs:
                        r = bench.pipeline(lat, cfg, args.orders)
                        piped.setdefault((lat, cfg), []).append(r)
                        bad = {k: v for k, v in r.statuses.items() if k != "complete"}
                        print(
                            f"[{rep + 1}] pipeline {lat:>4.0f} ms  {cfg.label()} {r.rate:8.1f} "
                            f"orders/s ({r.n} in {r.elapsed_s:.1f} s; create {r.create_s:.1f} s, "
                            f"enqueue {r.enqueue_s:.2f} s; stub requests {r.requests}"
                            f"{'; NOT COMPLETE ' + str(bad) if bad else ''})",
                            flush=True,
                        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for proc in list(_STARTED):
            proc.stop()
        dispose_all()

    print(f"\nmedians of {args.repeat} (orders/s; pipeline: first publish -> last 'complete'):")
    for lat in latencies:
        if naive[lat]:
            print(describe("naive", lat, "sequential, 1 keep-alive client", naive[lat]))
        for cfg in configs:
            print(describe("pipeline", lat, cfg.label(), piped[(lat, cfg)]))
    print("\nratio pipeline / naive (medians, same run):")
    for lat in latencies:
        if not naive[lat]:
            continue
        base = _med([r.rate for r in naive[lat]])
        for cfg in configs:
            rate = _med([r.rate for r in piped[(lat, cfg)]])
            print(
                f"  {lat:>4.0f} ms  {cfg.label()}  {rate:8.1f} / {base:6.1f} = {rate / base:6.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
