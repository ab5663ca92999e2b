"""Does pausing the cyclic garbage collector speed up batch intake? (not a test)

Runs ``worker.api.submission._intake`` (decode, check, store, serialise: everything of a
``POST /v1/orders/batch`` but the HTTP framing) on a batch of ``--orders`` orders, alternating
with and without ``gc.disable()`` around it, ``--runs`` times each, in one process against
``--database-url`` (migrated to head). Prints the median, min and max of each and the
collector's passes and pause time in the runs without the pause.

    python bench/gc_pause.py --database-url postgresql://root@127.0.0.1:5432/h_audit
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import new_payload
from worker import migrate
from worker.api import submission
from worker.db import transaction
from worker.intake import service
from worker.intake.callers import create_caller
from worker.settings import Settings, normalise_database_url


@contextlib.contextmanager
def paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    url = normalise_database_url(args.database_url)
    migrate.upgrade(url)
    settings = Settings(database_url=url, redis_url="redis://127.0.0.1:1/0")
    with transaction(url) as session:
        caller, _ = create_caller(session, f"gc-bench-{uuid.uuid4().hex[:8]}")
        caller_id = caller.id
    times: dict[str, list[float]] = {"gc on": [], "gc paused": []}
    passes: list[int] = []
    pause_s: list[float] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started and passes:
            pause_s[-1] += time.perf_counter() - started.pop()
            passes[-1] += 1

    if hasattr(submission, "gc_paused"):  # the product's own pause, if any: this bench decides
        submission.gc_paused = contextlib.nullcontext  # type: ignore[attr-defined]
    gc.callbacks.append(on_gc)
    for run in range(args.runs * 2):
        mode = "gc paused" if run % 2 else "gc on"
        tag = uuid.uuid4().hex[:8]
        orders = [new_payload(i, external_id=f"{tag}-{i}") for i in range(args.orders)]
        body = orjson.dumps({"orders": orders})
        del orders
        gc.collect()
        passes.append(0)
        pause_s.append(0.0)
        after = submission.AfterResponse(None, deferred=True)  # type: ignore[arg-type]
        ctx = paused() if mode == "gc paused" else contextlib.nullcontext()
        start = time.perf_counter()
        with ctx:
            submission._intake(
                service.accept_batch, settings, caller_id, body, key=None, dispatch=after
            )
        times[mode].append(time.perf_counter() - start)
        if mode == "gc on":
            print(
                f"run {run}: {mode} {times[mode][-1]:.3f} s, {passes[-1]} gc passes, "
                f"{pause_s[-1] * 1000:.0f} ms in gc",
                flush=True,
            )
        else:
            print(f"run {run}: {mode} {times[mode][-1]:.3f} s", flush=True)
    gc.callbacks.remove(on_gc)
    for mode, values in times.items():
        print(
            f"{mode}: median {statistics.median(values):.3f} s "
            f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"
        )


if __name__ == "__main__":
    main()
