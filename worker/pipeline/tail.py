"""A run's last calls, landed on a thread of the worker process while its next message starts.

A prefork worker process runs one task at a time and fetches its next message only when the
task returns. Near a run's end its last calls no longer fill the process's permits, and the
permits sat idle through the task's end, the dispatcher pass, Celery's hand-off of the next
message and the next run's claim: about 6 % of a process's time with the upstream at its
capacity (``bench/RESULTS.md``, seventh pass, measured with a sampler of the gate and py-spy).
So once a run's pending calls are no more than its process's allotment, the run hands the
rest (its flight, the reconciliation, and what the result leaves to its caller) to this thread
and returns; the next run's claim overlaps those calls.

The orders' safety stays with their lease: a tail's orders are leased in the database, the
tail renews the lease while their calls are out, and if the process dies the sweeper re-drives
them once it expires (a SIGKILL acks the message anyway: celery #1628). One tail at a time per
process: while one is landing, the next run lands its own calls itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Tail:
    """The process's one background thread for the end of a run (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def free(self) -> bool:
        """Whether a run may hand its rest over now (no other tail is landing)."""
        thread = self._thread
        return thread is None or not thread.is_alive()

    def hand_off(self, rest: Callable[[], None]) -> bool:
        """Run ``rest`` on the tail thread; False (nothing started) while another lands."""
        with self._lock:
            if not self.free():
                return False
            self._thread = threading.Thread(
                target=_guarded, args=(rest,), name="run-tail", daemon=True
            )
            self._thread.start()
            return True

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the landing tail (warm shutdown); True once none is landing."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return self.free()


def _guarded(rest: Callable[[], None]) -> None:
    try:
        rest()
    except Exception:
        # The orders keep their lease: the sweeper re-drives them when it expires.
        log.exception("run_tail_failed")
