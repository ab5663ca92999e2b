"""``orders worker`` as two pools: one process tree drives orders, another delivers webhooks.

A receiver that hangs can then only ever occupy webhook processes. The command starts both
as children and supervises them: if either exits, the other is stopped and the command exits
non-zero, so that whatever supervises it (Compose, systemd, Kubernetes) restarts the pair.
SIGTERM and SIGINT are passed on to both (Celery's warm shutdown).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

STOP_GRACE_S = 30.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Children must not outlive a supervisor killed with SIGKILL (Linux; elsewhere best effort).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def pool_commands(
    *, concurrency: int, webhook_concurrency: int, pool: str, nice: int
) -> list[list[str]]:
    """The two ``orders worker`` commands: ``orders`` queue, then ``webhooks`` queue."""
    base = [sys.executable, "-m", "worker", "worker", "--pool", pool, "--nice", str(nice)]
    return [
        [*base, "--queues", "orders", "--concurrency", str(concurrency)],
        [*base, "--queues", "webhooks", "--concurrency", str(webhook_concurrency)],
    ]


def supervise(commands: Sequence[Sequence[str]], *, poll_s: float = 0.5) -> int:
    """Run ``commands`` as children until one exits or we are told to stop; the exit code.

    Told to stop (SIGTERM/SIGINT): 0 if every child stopped cleanly. A child that exits on
    its own: its code, or 1 if that was 0 (a pool that stops by itself is a failure).
    """
    children = [subprocess.Popen(list(c), preexec_fn=_die_with_parent) for c in commands]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(children, signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(poll_s)
        if not stopping:
            code: int = next(c.returncode for c in children if c.returncode is not None)
            print(f"orders worker: a pool exited with code {code}; stopping", file=sys.stderr)
            _signal_all(children, signal.SIGTERM)
            _wait_all(children)
            return code or 1
        _wait_all(children)
        codes: list[int] = [abs(child.returncode or 0) for child in children]
        return max(codes)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_all(children: Sequence[subprocess.Popen[bytes]], signum: int) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signum)


def _wait_all(children: Sequence[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
