"""One per worker process: takes permits for upstream calls, gives them back, reports windows.

Threads that want a permit at the same moment share one Redis round trip: the first becomes the
fetcher and asks for as many permits as there are waiters. Releases are combined the same way.
A reporter thread sends the process's window of call results every ``report_interval_s`` and
keeps the process's copy of the shared state (breaker, pause) fresh.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
import structlog

from worker.errors import AmbiguousError, UpstreamError, UpstreamUnavailable
from worker.flow.breaker import Mode
from worker.flow.state import Admission, FlowState, admission
from worker.flow.store import FlowStore, Grant
from worker.flow.window import Signal, Window, clamp_retry_after_s, signal_of

T = TypeVar("T")
log = structlog.get_logger(__name__)

# While the budget is saturated, ask Redis again this often (a local release wakes us sooner).
POLL_S = 0.003
# A pause (Retry-After) up to this long is waited out in the thread; longer ones go back to
# the database (the order waits with ``next_attempt_at``).
SHORT_WAIT_S = 2.0
# Orders turned away by an open breaker come back after about this long (jittered by the
# pipeline): a few probes' worth, so the fleet drains soon after the upstream is back.
OUTAGE_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Permit:
    id: str
    position: int


class Gate:
    """The process's door to the fleet-wide budget (thread-safe)."""

    def __init__(
        self,
        store: FlowStore,
        *,
        ttl_s: float,
        max_wait_s: float = 10.0,
        report_interval_s: float = 0.1,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_wait_s = max_wait_s
        self.report_interval_s = report_interval_s
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._seat = threading.Condition(lock)
        self._spare: list[Permit] = []
        self._waiting = 0
        self._fetching = False
        self._next_fetch_at = 0.0
        self._blocked: tuple[UpstreamUnavailable, float] | None = None
        self._batches = itertools.count(1)
        self._tag = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._to_release: list[str] = []
        self._held: set[str] = set()
        self._last_count = 0
        self._releasing = False
        self._window = Window()
        self._state: FlowState | None = None
        self._report_now = threading.Event()
        self._stop = threading.Event()
        self._reporter: threading.Thread | None = None

    # ------------------------------------------------------------------ calls

    def call(self, fn: Callable[[], T]) -> T:
        """Run one upstream call under a permit.

        Raises ``UpstreamUnavailable`` without calling when the fleet may not call now, and
        turns a failure that is the upstream's, not the order's (429/503; 5xx while the
        breaker is not closed), into ``UpstreamUnavailable``: it spends no retry budget.
        """
        permit = self.acquire()
        started = time.monotonic()
        try:
            result = fn()
        except UpstreamError as exc:
            error = self._finish(permit, exc, time.monotonic() - started)
            if error is exc:
                raise
            raise error from exc
        except BaseException:
            self._release(permit.id)
            raise
        self._finish(permit, None, time.monotonic() - started)
        return result

    def allowance(self) -> int | None:
        """Calls the fleet may have in flight now (the learned limit under the ceiling), as
        this process last saw it; None before it has looked."""
        state = self._state
        if state is None:
            return None
        return min(state.effective_limit, self.store.cfg.limit.ceiling)

    def admission(self) -> Admission:
        """What the shared state (as this process last saw it) allows a new call now."""
        self._ensure_reporter()
        state = self._state
        return admission(state, time.time()) if state is not None else Admission("go")

    # ------------------------------------------------------------------ permits

    def acquire(self) -> Permit:
        """A permit, waiting while the budget is saturated (at most ``max_wait_s``).

        One waiting thread holds the seat and polls Redis for everyone; the others sleep until
        it hands them a permit (no herd of threads waking on every poll).
        """
        self._ensure_reporter()
        t0 = time.monotonic()
        deadline = t0 + self.max_wait_s
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    if self._spare:
                        self._window_wait(time.monotonic() - t0)
                        return self._spare.pop()
                    self._check(deadline)
                    if self._fetching:
                        self._cond.wait(deadline - time.monotonic())
                        continue
                    self._fetching = True
                    try:
                        self._poll(deadline)
                    finally:
                        self._fetching = False
                        if self._spare:
                            # One waiter per spare permit (we take one): the last takes the seat.
                            self._cond.notify(len(self._spare))
                        else:  # blocked, or out of time: everyone should see it now
                            self._cond.notify_all()
            finally:
                self._waiting -= 1
                self._drop_unwanted_spares()

    def _check(self, deadline: float) -> None:
        blocked = self._blocked
        if blocked is not None and blocked[1] > time.monotonic():
            raise _copy(blocked[0])
        if time.monotonic() >= deadline:
            raise UpstreamUnavailable(
                "upstream_busy",
                f"no call permit within {self.max_wait_s:.0f} s",
                retry_after_s=1.0,
            )

    def _poll(self, deadline: float) -> None:
        """Hold the seat: ask Redis until something is granted, blocked, or the deadline."""
        while not self._spare:
            blocked = self._blocked
            now = time.monotonic()
            if (blocked is not None and blocked[1] > now) or now >= deadline:
                return
            if now < self._next_fetch_at:
                self._seat.wait(min(self._next_fetch_at, deadline) - now)
                continue
            wait_s = self._fetch(deadline - now)
            self._next_fetch_at = time.monotonic() + wait_s

    def _fetch(self, remaining_s: float) -> float:
        """Ask Redis for permits for every waiter (called holding the lock, drops it for I/O).

        Returns how long to wait before asking again (0: ask again now / served).
        """
        want = max(1, self._waiting - len(self._spare))
        prefix = f"{self._tag}:{next(self._batches)}:"
        self._cond.release()
        try:
            grant = self.store.acquire(want, prefix=prefix, ttl_s=self.ttl_s, now_s=time.time())
        except redis.RedisError as exc:
            grant = None
            error = exc
        finally:
            self._cond.acquire()
        if grant is None:
            self._block(UpstreamUnavailable("flow_unavailable", f"budget unreadable: {error}"), 1.0)
            return 0.0
        return self._take(grant, prefix, remaining_s)

    def _take(self, grant: Grant, prefix: str, remaining_s: float) -> float:
        if grant.count:
            permits = [
                Permit(f"{prefix}{i}", grant.first_position + i - 1)
                for i in range(grant.count, 0, -1)
            ]
            self._spare.extend(permits)
            self._held.update(p.id for p in permits)
            self._last_count = grant.first_position + grant.count - 1
            return 0.0
        if grant.code == 1 and (grant.wait_s > SHORT_WAIT_S or grant.wait_s > remaining_s):
            error = UpstreamUnavailable(
                "upstream_paused",
                f"the upstream asked to wait {grant.wait_s:.1f} s (Retry-After)",
                retry_after_s=grant.wait_s,
            )
            self._block(error, min(grant.wait_s, 1.0))
            return 0.0
        if grant.code == 2:
            error = UpstreamUnavailable(
                "upstream_unavailable",
                "the upstream is failing for everyone; probes only",
                retry_after_s=OUTAGE_RETRY_S,
            )
            self._block(error, 0.2)
            return 0.0
        return max(grant.wait_s, POLL_S)

    def _block(self, error: UpstreamUnavailable, for_s: float) -> None:
        self._blocked = (error, time.monotonic() + for_s)

    def _drop_unwanted_spares(self) -> None:
        extra = len(self._spare) - self._waiting
        if extra > 0 and not self._fetching:
            ids = [p.id for p in self._spare[:extra]]
            del self._spare[:extra]
            self._to_release.extend(ids)
            self._held.difference_update(ids)

    def _window_wait(self, wait_s: float) -> None:
        if wait_s > 0.001:
            w = self._window
            self._window = Window(
                w.ok, w.dropped, w.slow, w.failed, w.latency_sum_s, w.refused_at,
                w.peak_in_flight, w.retry_after_s, w.wait_s + wait_s,
            )  # fmt: skip

    # ------------------------------------------------------------------ results

    def _finish(
        self, permit: Permit, error: UpstreamError | None, latency_s: float
    ) -> UpstreamError | None:
        """Count the result, give the permit back; returns the error the caller should see."""
        signal = signal_of(error)
        retry_after_s = error.retry_after_s if error is not None else None
        with self._cond:
            self._window = self._window.add(
                signal, latency_s=latency_s, position=permit.position, retry_after_s=retry_after_s
            )
            handed = signal is Signal.OK and self._hand_over(permit)
        if not handed:
            self._release(permit.id)
        if signal is not Signal.OK:
            self._report_now.set()
        if error is None or isinstance(error, AmbiguousError):
            return error
        if signal is Signal.DROPPED:
            # Keeps its reason (upstream_429, upstream_503): only the budget is spared.
            return UpstreamUnavailable(
                error.reason,
                error.message,
                status_code=error.status_code,
                retry_after_s=clamp_retry_after_s(retry_after_s),
            )
        state = self._state
        # Only while it is open: once a probe found the upstream answering (half-open), a
        # failure is the order's own again and spends its budget, or a payload the upstream
        # always refuses would wait for free for ever.
        if signal is not Signal.OK and state is not None and state.breaker.mode is Mode.OPEN:
            return UpstreamUnavailable(
                "upstream_unavailable",
                error.message,
                status_code=error.status_code,
                retry_after_s=OUTAGE_RETRY_S,
            )
        return error

    def _hand_over(self, permit: Permit) -> bool:
        """Give a permit straight to a thread of ours that waits (called holding the lock).

        Saves two Redis round trips per call while the process has work. Only while the shared
        state allows it: breaker closed, no pause, and the permit still within the limit (after
        a cut, permits go back to Redis until the fleet is under it).
        """
        state = self._state
        if self._waiting <= len(self._spare) or state is None:
            return False
        if state.breaker.mode is not Mode.CLOSED or state.paused_until > time.time():
            return False
        # Its position now: at least the fleet count this process last saw.
        position = max(permit.position, self._last_count)
        if position > state.effective_limit:
            return False
        self._spare.append(Permit(permit.id, position))
        self._cond.notify(1)
        return True

    def _release(self, permit_id: str) -> None:
        with self._cond:
            self._held.discard(permit_id)
            self._to_release.append(permit_id)
            if self._releasing:
                return
            self._releasing = True
        try:
            while True:
                with self._cond:
                    ids, self._to_release = self._to_release, []
                    if not ids:
                        self._releasing = False
                        # A permit came back: whoever holds the seat may ask Redis at once.
                        self._next_fetch_at = 0.0
                        self._seat.notify()
                        return
                try:
                    self.store.release(ids)
                except redis.RedisError as exc:  # they expire by themselves
                    log.warning("flow_release_failed", permits=len(ids), error=str(exc))
        except BaseException:
            with self._cond:
                self._releasing = False
            raise

    # ------------------------------------------------------------------ reporting

    def _ensure_reporter(self) -> None:
        if self._reporter is None or not self._reporter.is_alive():
            with self._cond:
                if self._reporter is None or not self._reporter.is_alive():
                    self._reporter = threading.Thread(
                        target=self._report_loop, name="flow-reporter", daemon=True
                    )
                    self._reporter.start()

    def _report_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.report()
            except Exception as exc:  # the thread must outlive a bad moment (or a closed client)
                if self._stop.is_set():
                    return
                log.warning("flow_report_crashed", error=repr(exc))
            self._report_now.wait(self.report_interval_s)
            self._report_now.clear()

    def report(self) -> FlowState | None:
        """Send this process's window to the shared state; refresh our copy of it."""
        with self._cond:
            window, self._window = self._window, Window()
            to_release = bool(self._to_release) and not self._releasing
            held = list(self._held)
        try:
            if to_release:
                self._release_pending()
            # Permits live ttl_s unless renewed: a dead process's permits free up that soon.
            self.store.renew(held, expires_at_s=time.time() + self.ttl_s)
            state = self.store.report(window) if window.calls else self.store.read()
        except redis.RedisError as exc:
            log.warning("flow_report_failed", error=str(exc))
            return None
        self._state = state
        return state

    def _release_pending(self) -> None:
        with self._cond:
            ids, self._to_release = self._to_release, []
        self.store.release(ids)

    def close(self) -> None:
        """Stop reporting (the permits still held expire by themselves)."""
        self._stop.set()
        self._report_now.set()
        if self._reporter is not None:
            self._reporter.join(1.0)


def _copy(error: UpstreamUnavailable) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        error.reason,
        error.message,
        status_code=error.status_code,
        retry_after_s=error.retry_after_s,
    )
