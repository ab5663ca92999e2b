"""The flow-control matrix of issue 15 (``python bench/flow.py --matrix``; not a test).

Every row runs on fresh processes and again after a warm-up at another latency on the same
processes (the stub's latency changed at run time, nothing restarted), and the whole matrix
prints as one table with each row's target and PASS/MISS. Rows (``--rows a,b,...``):

* ``a``: no capacity, 50 ms, from the first POST (``bench/e2e.py``): pipeline / naive loop,
  fresh and after ``--warm-s`` at 0 ms. Target >= 30x.
* ``b``: no capacity, jitter sigma 0.5, 50 ms then 200 ms then 20 ms in one run, each phase
  against the same phase on fresh processes (odd repeats run the one run first). Target >= 0.8x.
* ``c``: capacity 16 by refusal (429, ``Retry-After: 1``) at 50 ms, ceiling 16
  (``ORDERS_UPSTREAM_MAX_IN_FLIGHT``). Target >= 90 % of ideal (160 orders/s), <= 1 % refused.
* ``d``: the same, ceiling unset. Target >= 85 %, <= 2 % refused.
* ``e``: capacity 16 by slowing down (calls beyond 16 queue in the stub), ceiling unset.
  Target >= 90 % of ideal, mean in flight at the stub <= 24.
* ``f``: an outage of ``--outage-s`` at 50 ms and capacity 16 with no order list (404): every
  path answers 502 (``f502``), then the public port refuses connections (``frefuse``).
  Target: 0 orders failed, <= 2 calls/s after its first 2 s, full speed within 5 s of its end.
  Calls during a refusal never reach the stub: they are the machine's failed TCP connects
  (``/proc/net/snmp`` ``AttemptFails``), which other work on the box may add to.
* ``g``: 20 orders posted 2 s after 3,000 at capacity 16, ceiling 16 (``bench/fairness.py``).
  Target: final within 2 x the 20's solo time + 1 s. Fresh processes only.

Only ``ORDERS_*`` variables configure the fleet. Every process started here is stopped by its
PID (the stub by :func:`~api_stub.testing.stub_process`, the others by :class:`Procs`), and
every wait has a deadline (``--timeout-s``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api_stub.testing import stub_process
from bench.flow import REPO, Bench
from bench.pipeline import proc_cpu_s, proc_tree
from worker.queue.enqueue import enqueue_orders

IDEAL_16 = 160.0  # capacity 16 at 50 ms, two calls per order
ALL_ROWS = "a,b,c,d,e,f,g"


@dataclass
class Line:
    """One line of the table: medians of ``--repeat`` runs of one row and variant."""

    row: str
    variant: str
    runs: list[dict[str, float]] = field(default_factory=list)
    target: str = ""
    check: Callable[[dict[str, float]], bool] | None = None

    def value(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    def medians(self) -> dict[str, float]:
        keys = {k for r in self.runs for k in r}
        return {k: v for k in keys if (v := self.value(k)) is not None}

    def verdict(self) -> str:
        if not self.runs or self.check is None:
            return "-"
        return "PASS" if self.check(self.medians()) else "MISS"


def tcp_attempt_fails() -> int:
    """Failed TCP connects on this machine so far (``/proc/net/snmp`` Tcp AttemptFails)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    header, values = [ln for ln in lines if ln[0] == "Tcp:"][:2]
    return int(values[header.index("AttemptFails")])


class Matrix:
    """Runs the rows on one stub process (with a control port) and our own Redis/database."""

    def __init__(self, args: argparse.Namespace, bench: Bench) -> None:
        self.args, self.bench = args, bench
        self.stub = bench.stub
        self._seq = 0

    # -- pieces -------------------------------------------------------------------------

    def worker_cpu_s(self, procs: Any) -> float:
        return sum(proc_cpu_s(p) for p in proc_tree(procs.popens[0].pid))

    def _batch(self, stem: str) -> str:
        self._seq += 1
        return f"{stem}-{self._seq}"

    def warm(self, latency_ms: float) -> None:
        """Keep the fleet busy at ``latency_ms`` for ``--warm-s``, then wait for it to settle."""
        b, seconds = self.bench, self.args.warm_s
        self.stub.set_latency(latency_ms)
        batch = self._batch("warmup")
        added = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if added - b.db.complete_count(batch) < 200:
                ids, _ = b.db.add(100, batch, True)
                enqueue_orders(b.celery, ids, chunk_size=50)
                added += len(ids)
            else:
                time.sleep(0.05)
        b.wait(batch, added, self.args.timeout_s)

    def drive(self, procs: Any, n: int, *, ideal: float | None = None) -> dict[str, float]:
        """``n`` orders due at once, handed to the dispatcher as the intake does (chunks
        follow the fleet's limit); goodput, refusals, load at the stub, worker CPU."""
        b = self.bench
        batch = self._batch("bench")
        self.stub.reset_stats()
        cpu_before = self.worker_cpu_s(procs)
        started = time.perf_counter()
        ids, _ = b.db.add(n, batch, True, due_in_s=0)
        b.dispatch(ids, procs.extra)
        b.wait(batch, n, self.args.timeout_s)
        elapsed = time.perf_counter() - started
        cpu = self.worker_cpu_s(procs) - cpu_before
        stats = self.stub.stats()
        counts = b.db.counts(batch)
        done = counts.get("complete", 0)
        calls = sum(v for k, v in stats["requests"].items() if k != "token")
        out = {
            "goodput": done / elapsed,
            "refused_pct": 100 * sum(stats["refused"].values()) / max(1, calls),
            "peak": stats["peak_in_flight"],
            "mean": stats["mean_in_flight"],
            "failed": n - done,
            "cpu_ms": 1000 * cpu / n,
        }
        if ideal:
            out["of_ideal"] = out["goodput"] / ideal
        return out

    @contextlib.contextmanager
    def fresh(self, extra: dict[str, str], **stub: Any) -> Any:
        self.bench.reset(**stub)
        with self.bench.fleet(extra) as procs:
            yield procs

    # -- rows ---------------------------------------------------------------------------

    def row_a(self, warm: bool) -> dict[str, float]:
        a = self.args
        out = self.args.tmp / f"e2e-{time.monotonic_ns()}.json"
        argv = [sys.executable, str(REPO / "bench" / "e2e.py"), "--orders", str(a.orders),
                "--latency-ms", "50", "--naive-orders", str(a.naive_orders),
                "--db-url", a.db_url, "--json", str(out),
                "--timeout-s", str(a.timeout_s)]  # fmt: skip
        if warm:
            argv += ["--warm-s", str(a.warm_s), "--warm-latency-ms", "0"]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=a.timeout_s * 3)
        (row,) = json.loads(out.read_text())
        return {
            "goodput": row["pipeline_per_s"],
            "ratio": row["ratio"],
            "peak": row["stub_peak_in_flight"],
            "mean": row["stub_mean_in_flight"],
            "cpu_ms": row["cpu_ms"]["worker"],
            "failed": 0.0,
        }

    PHASES = (50.0, 200.0, 20.0)

    def row_b_one_run(self) -> list[dict[str, float]]:
        with self.fresh({}, latency_ms=self.PHASES[0], jitter_sigma=0.5) as procs:
            out = []
            for latency in self.PHASES:
                self.stub.set_latency(latency)
                out.append(self.drive(procs, self.args.orders))
            return out

    def row_b_fresh(self, latency: float) -> dict[str, float]:
        with self.fresh({}, latency_ms=latency, jitter_sigma=0.5) as procs:
            return self.drive(procs, self.args.orders)

    def capacity_row(self, warm: bool, *, ceiling: bool, mode: str) -> dict[str, float]:
        extra = {"ORDERS_UPSTREAM_MAX_IN_FLIGHT": "16"} if ceiling else {}
        # ``--capacity-stub``: other upstreams of the same capacity and latency (a 503, no or
        # a longer Retry-After, jitter) than the stub's defaults.
        stub = {"latency_ms": 50, "capacity": 16, "capacity_mode": mode, **self.args.capacity_stub}
        with self.fresh(extra, **stub) as procs:
            if warm:
                self.warm(0.0)
                self.stub.set_latency(50)
            # What 16 plain clients get from this stub on this box right now (the ideal
            # assumes the upstream's 50 ms are the whole of a call's time).
            raw = self.bench.raw_calls_per_s(threads=16, seconds=2.0) / 2
            out = self.drive(procs, self.args.orders, ideal=IDEAL_16)
            return {**out, "raw": raw, "of_raw": out["goodput"] / raw if raw else 0.0}

    def outage_row(self, warm: bool, *, mode: str) -> dict[str, float]:
        a, b = self.args, self.bench
        stub = {"latency_ms": 50, "capacity": 16, "order_list": False}
        with self.fresh({}, **stub):
            if warm:
                self.warm(0.0)
                self.stub.set_latency(50)
            n = a.outage_orders
            batch = self._batch("outage")
            ids, _ = b.db.add(n, batch, True)
            self.stub.reset_stats()
            enqueue_orders(b.celery, ids, chunk_size=50)
            b.wait(batch, n // 4, a.timeout_s)
            before_count, before_at = b.db.complete_count(batch), time.perf_counter()
            time.sleep(2.0)
            pre_rate = (b.db.complete_count(batch) - before_count) / (
                time.perf_counter() - before_at
            )
            self.stub.set_outage(True, mode=mode)
            began = time.time()
            time.sleep(2.0)
            fails_at_2s = tcp_attempt_fails()
            time.sleep(max(0.0, a.outage_s - 2.0))
            fails = tcp_attempt_fails() - fails_at_2s
            self.stub.set_outage(False)
            ended, ended_pc = time.time(), time.perf_counter()
            full_speed_s = self._to_full_speed(batch, n, pre_rate, ended_pc)
            b.wait(batch, n, a.timeout_s)
            drain_s = time.perf_counter() - ended_pc
            stats = self.stub.stats()
        if mode == "502":
            late = [t for t in stats["outage"]["calls_at"] if began + 2.0 <= t <= ended]
            calls_per_s = len(late) / max(1e-9, ended - began - 2.0)
        else:
            calls_per_s = fails / max(1e-9, a.outage_s - 2.0)
        counts = b.db.counts(batch)
        return {
            "outage_calls_per_s": calls_per_s,
            # Not complete. "held": ambiguous submits (a connection dropped mid-request, so the
            # upstream may have created the order) that an upstream without an order list
            # cannot settle: held for an operator, never re-submitted blindly (invariant 2).
            "failed": n - counts.get("complete", 0),
            "held": counts.get("submit_unknown", 0),
            "drain_s": drain_s,
            "full_speed_s": full_speed_s,
            "pre_rate": pre_rate,
            "peak": stats["peak_in_flight"],
        }

    def _to_full_speed(self, batch: str, n: int, pre_rate: float, ended_at: float) -> float:
        """Seconds after the end until one second completes >= 80 % of the pre-outage rate
        (or the batch is done); sampled every 0.25 s."""
        samples: list[tuple[float, int]] = []
        deadline = ended_at + self.args.timeout_s
        while time.perf_counter() < deadline:
            done = self.bench.db.complete_count(batch)
            now = time.perf_counter()
            samples.append((now, done))
            if done >= n:
                return now - ended_at
            old = [s for s in samples if s[0] <= now - 1.0]
            if old and done - old[-1][1] >= 0.8 * pre_rate * (now - old[-1][0]):
                return old[-1][0] - ended_at
            time.sleep(0.25)
        return float("inf")

    def row_g(self) -> dict[str, float]:
        a = self.args
        out = a.tmp / f"fair-{time.monotonic_ns()}.json"
        argv = [sys.executable, str(REPO / "bench" / "fairness.py"), "--only", "b_alone,a_then_b",
                "--big", str(a.fair_big), "--small", "20", "--repeat", "1", "--ceiling", "16",
                "--db-url", a.db_url, "--redis-url", a.redis_url, "--json", str(out),
                "--timeout-s", str(a.timeout_s)]  # fmt: skip
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=a.timeout_s * 3)
        res = json.loads(out.read_text())
        alone, mixed = res["B alone"]["b_s"], res["A then B"]["b_s"]
        return {
            "b_alone_s": alone,
            "b_s": mixed,
            "bound_s": 2 * alone + 1,
            "goodput": res["A then B"]["goodput"],
            "of_ideal": res["A then B"]["goodput"] / IDEAL_16,
        }

    # -- the whole matrix ---------------------------------------------------------------

    def run(self) -> list[Line]:
        a, rows = self.args, set(self.args.rows.split(","))
        lines: list[Line] = []

        def line(row: str, variant: str, target: str, check: Callable[..., bool]) -> Line:
            made = Line(row, variant, target=target, check=check)
            lines.append(made)
            return made

        plan: list[tuple[Line, Callable[[], dict[str, float]]]] = []
        if "a" in rows:
            for warm in (False, True):
                variant = f"after {a.warm_s:g} s at 0 ms" if warm else "fresh"
                made = line("a 50 ms", variant, ">= 30x naive", lambda m: m["ratio"] >= 30)
                plan.append((made, lambda warm=warm: self.row_a(warm)))
        b_lines: dict[float, tuple[Line, Line]] = {}
        if "b" in rows:
            for latency in self.PHASES:
                fresh = line(f"b {latency:g} ms s0.5", "fresh", "(reference)", lambda m: True)
                fresh.check = None  # the reference of the phase below, no target of its own
                one = line(f"b {latency:g} ms s0.5", "one run", ">= 0.8x fresh", lambda m: True)
                b_lines[latency] = (fresh, one)
        caps = [
            ("c", "cap 16 refuse, ceil 16", True, "refuse", ">= 90 %, <= 1 % refused",
             lambda m: m["of_ideal"] >= 0.9 and m["refused_pct"] <= 1),
            ("d", "cap 16 refuse, no ceil", False, "refuse", ">= 85 %, <= 2 % refused",
             lambda m: m["of_ideal"] >= 0.85 and m["refused_pct"] <= 2),
            ("e", "cap 16 queue, no ceil", False, "queue", ">= 90 %, mean <= 24",
             lambda m: m["of_ideal"] >= 0.9 and m["mean"] <= 24),
        ]  # fmt: skip
        for key, name, ceiling, mode, target, check in caps:
            if key in rows:
                for warm in (False, True):
                    variant = f"after {a.warm_s:g} s at 0 ms" if warm else "fresh"
                    made = line(f"{key} {name}", variant, target, check)
                    plan.append(
                        (
                            made,
                            lambda w=warm, c=ceiling, m=mode: self.capacity_row(
                                w, ceiling=c, mode=m
                            ),
                        )
                    )
        if "f" in rows:
            for mode in ("502", "refuse"):
                for warm in (False, True):
                    variant = f"after {a.warm_s:g} s at 0 ms" if warm else "fresh"
                    made = line(
                        f"f outage {a.outage_s:g} s {mode}",
                        variant,
                        "0 failed, <= 2 calls/s, full speed <= 5 s",
                        lambda m: (
                            m["failed"] == 0
                            and m["outage_calls_per_s"] <= 2
                            and m["full_speed_s"] <= 5
                        ),
                    )
                    plan.append((made, lambda w=warm, md=mode: self.outage_row(w, mode=md)))
        if "g" in rows:
            made = line(
                f"g 20 behind {a.fair_big}", "fresh", "<= 2 x solo + 1 s",
                lambda m: m["b_s"] <= m["bound_s"],
            )  # fmt: skip
            plan.append((made, self.row_g))
        for rep in range(a.repeat):
            for made, run in plan:
                self._one(made, run, rep)
            if b_lines:
                self._b(b_lines, rep)
        for fresh, one in b_lines.values():
            ref = fresh.value("goodput")
            one.check = lambda m, ref=ref: ref is not None and m["goodput"] >= 0.8 * ref
            for r in one.runs:
                r["vs_fresh"] = r["goodput"] / ref if ref else float("nan")
        return lines

    def _one(self, made: Line, run: Callable[[], dict[str, float]], rep: int) -> None:
        started = time.monotonic()
        try:
            result = run()
        except Exception as exc:  # one broken row must not lose the others' figures
            print(f"[{rep + 1}] {made.row} / {made.variant}: ERROR {exc!r}", flush=True)
            return
        made.runs.append(result)
        shown = ", ".join(f"{k} {v:.3g}" for k, v in result.items())
        took = time.monotonic() - started
        print(f"[{rep + 1}] {made.row} / {made.variant} ({took:.0f} s): {shown}", flush=True)

    def _b(self, b_lines: dict[float, tuple[Line, Line]], rep: int) -> None:
        # Odd repeats run the one run first, so that neither side always follows the other:
        # its first phase and the 50 ms fresh run are the same experiment (fresh processes,
        # the same stub) and a run's position moved it (50 ms fresh: 283-321 orders/s right
        # after a one run, 328-532 after the rows before; eighth pass).
        if rep % 2 == 0:
            self._b_fresh(b_lines, rep)
        self._b_one_run(b_lines, rep)
        if rep % 2 == 1:
            self._b_fresh(b_lines, rep)

    def _b_fresh(self, b_lines: dict[float, tuple[Line, Line]], rep: int) -> None:
        for latency, (fresh, _) in b_lines.items():
            self._one(fresh, lambda latency=latency: self.row_b_fresh(latency), rep)

    def _b_one_run(self, b_lines: dict[float, tuple[Line, Line]], rep: int) -> None:
        started = time.monotonic()
        try:
            phases = self.row_b_one_run()
        except Exception as exc:  # one broken row must not lose the others' figures
            print(f"[{rep + 1}] b one run: ERROR {exc!r}", flush=True)
            return
        for latency, result in zip(self.PHASES, phases, strict=True):
            b_lines[latency][1].runs.append(result)
        took = time.monotonic() - started
        shown = "; ".join(
            f"{lat:g} ms {r['goodput']:.1f}/s" for lat, r in zip(self.PHASES, phases, strict=True)
        )
        print(f"[{rep + 1}] b one run ({took:.0f} s): {shown}", flush=True)


COLUMNS = (
    ("goodput", "orders/s", "{:.0f}"),
    ("of_ideal", "of ideal", "{:.0%}"),
    ("raw", "16 raw clients", "{:.0f}"),
    ("of_raw", "of raw", "{:.0%}"),
    ("refused_pct", "refused", "{:.1f} %"),
    ("peak", "peak", "{:.0f}"),
    ("mean", "mean", "{:.1f}"),
    ("outage_calls_per_s", "calls/s out", "{:.1f}"),
    ("failed", "not complete", "{:.0f}"),
    ("held", "of which held", "{:.0f}"),
    ("drain_s", "drain s", "{:.1f}"),
    ("full_speed_s", "full speed s", "{:.1f}"),
    ("cpu_ms", "worker CPU ms/order", "{:.2f}"),
    ("ratio", "x naive", "{:.1f}x"),
    ("vs_fresh", "vs fresh", "{:.2f}x"),
    ("b_s", "B final s", "{:.1f}"),
    ("bound_s", "bound s", "{:.1f}"),
)


def table(lines: list[Line]) -> str:
    """The matrix as a Markdown table (medians; ``-`` where a figure does not apply)."""
    head = ["row", "variant", *(title for _, title, _ in COLUMNS), "target", ""]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for made in lines:
        m = made.medians()
        cells = [made.row, made.variant]
        cells += [fmt.format(m[k]) if k in m else "-" for k, _, fmt in COLUMNS]
        cells += [made.target, made.verdict() if made.runs else "no run"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--matrix`` options of ``bench/flow.py``."""
    parser.add_argument("--matrix", action="store_true", help="run the issue-15 matrix")
    parser.add_argument("--rows", default=ALL_ROWS, help="rows of the matrix, e.g. a,c,f")
    parser.add_argument("--warm-s", type=float, default=120.0, help="warm-up at 0 ms (matrix)")
    parser.add_argument("--naive-orders", type=int, default=100)
    parser.add_argument("--fair-big", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="matrix: fewer orders, short waits")
    parser.add_argument(
        "--capacity-stub",
        type=json.loads,
        default={},
        help="rows c-e: JSON of stub settings on top of capacity 16 at 50 ms, e.g. "
        '\'{"over_capacity_status": 503, "capacity_retry_after_s": 0, "jitter_sigma": 0.3}\'',
    )


def main(args: argparse.Namespace) -> int:
    """Run the matrix and print the table with the load average."""
    fixed = sorted({"latency_ms", "capacity", "capacity_mode"} & set(args.capacity_stub))
    if fixed:
        # The ideal (160 orders/s) and the rows' meaning rest on these.
        raise SystemExit(f"--capacity-stub may not set {', '.join(fixed)}")
    if args.quick:
        args.orders = min(args.orders, 800)
        args.outage_orders = min(args.outage_orders, 1000)
        args.warm_s = min(args.warm_s, 20.0)
        args.outage_s = min(args.outage_s, 15.0)
        args.naive_orders = min(args.naive_orders, 50)
        args.fair_big = min(args.fair_big, 1500)
        args.repeat = 1 if args.repeat == 3 else args.repeat
    load_before = os.getloadavg()
    print(f"load average at start: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    with stub_process(["--latency-ms", "0"]) as stub_url:
        bench = Bench(args, stub_url, args.tmp)
        lines = Matrix(args, bench).run()
    print()
    print(table(lines))
    print()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"medians of {args.repeat}; orders {args.orders} per run; uptime: {uptime}")
    return 0
