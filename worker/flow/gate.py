"""One per worker process: hands out permits from the process's lease, counts results.

A call takes a permit from the process's allotment with a counter under a lock: no Redis round
trip per call. A syncer thread renews the lease a few times a second (at once when threads
wait for more than the allotment, or on a refusal or a run of failures) with one script that
also reports the window of results and answers the new allotment and the shared state. Whoever
gets the controller's turn at a sync runs the controller for the fleet.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import redis
import structlog

from worker.errors import AmbiguousError, UpstreamError, UpstreamUnavailable
from worker.flow.breaker import Mode
from worker.flow.state import Admission, Verdict, admission
from worker.flow.store import FlowStore, Lease, Report
from worker.flow.window import Signal, Window, clamp_retry_after_s, signal_of

T = TypeVar("T")
log = structlog.get_logger(__name__)

# A pause (Retry-After) up to this long is waited out in the thread; longer ones go back to
# the database (the order waits with ``next_attempt_at``).
SHORT_WAIT_S = 2.0
# Orders turned away by an open breaker come back after about this long (jittered by the
# pipeline): a probe's worth, so the fleet drains soon after the upstream is back.
OUTAGE_RETRY_S = 1.0
# This many failures in a row in one process stop its calls for LOCAL_TRIP_S and tell the
# fleet at once, before the controller's next turn.
LOCAL_TRIP_FAILURES = 5
LOCAL_TRIP_S = 0.5
# After a refusal the process stays below the concurrency that was refused this long, until
# the controller's cut reaches it.
REFUSAL_HOLD_S = 0.5
# Immediate syncs (on demand) are at least this far apart.
MIN_SYNC_GAP_S = 0.02
# While threads wait for permits the allotment does not cover, syncs come this often (the
# others' shares shrink at their own next sync, so the permits move within a few of these).
STARVED_SYNC_S = 0.04


class Gate:
    """The process's door to the fleet-wide budget (thread-safe)."""

    def __init__(
        self,
        store: FlowStore,
        *,
        ttl_s: float = 3.0,
        sync_interval_s: float = 0.1,
        max_wait_s: float = 10.0,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.sync_interval_s = sync_interval_s
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition(threading.Lock())
        self._tag = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._allot = 0
        self._in_use = 0
        self._waiting = 0
        self._peak = 0
        self._demand_peak = 0
        self._tokens = -1
        self._window = Window()
        self._lease: Lease | None = None
        self._valid_until = 0.0
        self._paused_until = 0.0
        self._local_failures = 0
        self._local_open_until = 0.0
        self._cap = 0
        self._cap_until = 0.0
        self._probe_turns = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None

    # ------------------------------------------------------------------ calls

    def call(self, fn: Callable[[], T], latency_s: Callable[[], float | None] | None = None) -> T:
        """Run one upstream call under a permit.

        Raises ``UpstreamUnavailable`` without calling when the fleet may not call now, and
        turns a failure that is the upstream's, not the order's (429/503; a failure while the
        breaker is open or after it opened), into ``UpstreamUnavailable``: it spends no retry
        budget. ``latency_s`` gives the call's time to answer (else the wall time of ``fn``).
        """
        epoch = self.acquire()
        started = time.monotonic()
        try:
            result = fn()
        except UpstreamError as exc:
            error = self._finish(epoch, exc, None, time.monotonic() - started)
            if error is exc:
                raise
            raise cast(UpstreamError, error) from exc  # given an error, _finish returns one
        except BaseException:
            with self._cond:
                self._put_back()
            raise
        held = time.monotonic() - started
        measured = latency_s() if latency_s is not None else None
        self._finish(epoch, None, measured if measured is not None else held, held)
        return result

    def probe(self, calls: Sequence[Callable[[], object]]) -> bool:
        """While the breaker is open: the fleet's probe, if the slot is free (one per interval).

        ``calls`` take turns, one per slot won: calls that create nothing upstream (a preview,
        a read). They are not under the budget and spend no order's attempts.
        Only a 2xx counts as health. Returns whether a probe answered 2xx.
        """
        lease = self._lease
        if lease is None or lease.mode != Mode.OPEN:
            return False
        try:
            if not self.store.claim_probe(self._tag):
                return False
        except redis.RedisError:
            return False
        if not calls:
            return False
        # One call per slot, the kinds taking turns over the slots this process won.
        fn = calls[self._probe_turns % len(calls)]
        self._probe_turns += 1
        try:
            fn()
        except UpstreamError as exc:
            log.info("upstream_probe_failed", reason=exc.reason)
            return False
        with self._cond:
            if self._lease is not None and self._lease.epoch == lease.epoch:
                self._window.probe_ok += 1
        self._wake.set()
        return True

    def allowance(self) -> int | None:
        """Calls the fleet may have in flight (the level it is heading for during a ramp),
        as this process last saw it; None before it has looked."""
        lease = self._lease
        return None if lease is None else min(lease.target, self.store.cfg.ceiling)

    def allotment(self) -> int | None:
        """Permits this process may hold now (its lease's allotment); None before it has one."""
        return None if self._lease is None else self._allot

    def admission(self) -> Admission:
        """What the shared state (as this process last saw it) allows a new call now."""
        self._ensure_syncer()
        lease = self._lease
        if lease is None:
            return Admission(Verdict.GO)
        paused_s = max(0.0, self._paused_until - time.monotonic())
        return admission(Mode(lease.mode), paused_s)

    # ------------------------------------------------------------------ permits

    def acquire(self) -> int:
        """A permit (returns the breaker epoch it was granted under), waiting while the
        allotment is used up (at most ``max_wait_s``)."""
        self._ensure_syncer()
        deadline = time.monotonic() + self.max_wait_s
        asked = False
        with self._cond:
            self._waiting += 1
            self._demand_peak = max(self._demand_peak, self._in_use + self._waiting)
            try:
                while True:
                    now = time.monotonic()
                    self._check(now, deadline)
                    if self._paused_until > now:
                        self._cond.wait(self._paused_until - now)
                        continue
                    cap = self._allot
                    if self._cap_until > now:
                        cap = min(cap, self._cap)
                    if self._in_use < cap and self._tokens != 0:
                        self._in_use += 1
                        self._peak = max(self._peak, self._in_use)
                        if self._tokens > 0:
                            self._tokens -= 1
                        lease = self._lease
                        return lease.epoch if lease is not None else 0
                    if not asked:
                        # More demand than the allotment: the syncer asks for more now.
                        self._wake.set()
                        asked = True
                    # Woken by a permit put back or a sync that brought more (no polling).
                    self._cond.wait(min(deadline - now, 0.5))
            finally:
                self._waiting -= 1

    def _check(self, now: float, deadline: float) -> None:
        """Raise when no call may start (called holding the lock)."""
        lease = self._lease
        if lease is not None and lease.mode == Mode.OPEN:
            raise UpstreamUnavailable(
                "upstream_unavailable",
                "the upstream is failing for everyone; probes only",
                retry_after_s=OUTAGE_RETRY_S,
            )
        if self._local_open_until > now:
            raise UpstreamUnavailable(
                "upstream_unavailable",
                "the upstream failed this process's last calls; waiting a moment",
                retry_after_s=OUTAGE_RETRY_S,
            )
        paused_s = self._paused_until - now
        if paused_s > SHORT_WAIT_S or paused_s > deadline - now:
            raise UpstreamUnavailable(
                "upstream_paused",
                f"the upstream asked to wait {paused_s:.1f} s (Retry-After)",
                retry_after_s=paused_s,
            )
        if self._lease is not None and now > self._valid_until:
            raise UpstreamUnavailable(
                "flow_unavailable", "the call budget in Redis is unreachable", retry_after_s=1.0
            )
        if now >= deadline:
            raise UpstreamUnavailable(
                "upstream_busy",
                f"no call permit within {self.max_wait_s:.0f} s",
                retry_after_s=1.0,
            )

    def _put_back(self) -> None:
        self._in_use -= 1
        self._cond.notify()

    # ------------------------------------------------------------------ results

    def _finish(
        self, epoch: int, error: UpstreamError | None, latency_s: float | None, held_s: float
    ) -> UpstreamError | None:
        """Count the result, give the permit back; returns the error the caller should see."""
        signal = signal_of(error)
        retry_after_s = error.retry_after_s if error is not None else None
        now = time.monotonic()
        wake = False
        with self._cond:
            self._put_back()
            lease = self._lease
            current = lease.epoch if lease is not None else 0
            stale = epoch != current
            self._window.held_s += held_s
            if not stale:
                self._window.add(signal, latency_s=latency_s, retry_after_s=retry_after_s)
            if signal is Signal.OK:
                self._local_failures = 0
            elif signal is Signal.DROPPED:
                # Refused with this many in flight: stay below it until the cut arrives.
                self._cap = max(1, self._in_use)
                self._cap_until = now + REFUSAL_HOLD_S
                wake = True
            else:
                self._local_failures += 1
                if self._local_failures >= LOCAL_TRIP_FAILURES:
                    self._local_open_until = now + LOCAL_TRIP_S
                    self._local_failures = 0
                    self._window.trips += 1
                    wake = True
            # Open fleet-wide, or tripped here: later failures are the upstream's trouble.
            is_open = (lease is not None and lease.mode == Mode.OPEN) or (
                signal is not Signal.OK and self._local_open_until > now and not wake
            )
        if wake:
            self._wake.set()
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
        # While open, or after it opened under this call: the upstream's trouble, not the
        # order's. Once a probe found the upstream answering (half-open), a failure is the
        # order's own again, or a payload the upstream always refuses would wait for ever.
        if signal is not Signal.OK and (is_open or stale):
            return UpstreamUnavailable(
                "upstream_unavailable",
                error.message,
                status_code=error.status_code,
                retry_after_s=OUTAGE_RETRY_S,
            )
        return error

    # ------------------------------------------------------------------ syncing

    def _ensure_syncer(self) -> None:
        if self._syncer is None or not self._syncer.is_alive():
            with self._cond:
                if self._syncer is None or not self._syncer.is_alive():
                    self._syncer = threading.Thread(
                        target=self._sync_loop, name="flow-sync", daemon=True
                    )
                    self._syncer.start()

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sync()
            except Exception as exc:  # the thread must outlive a bad moment (or a closed client)
                if self._stop.is_set():
                    return
                log.warning("flow_sync_crashed", error=repr(exc))
            with self._cond:
                starved = self._waiting > 0 and self._in_use >= self._allot
            self._wake.wait(STARVED_SYNC_S if starved else self.sync_interval_s)
            self._wake.clear()
            gap = MIN_SYNC_GAP_S - (time.monotonic() - started)
            if gap > 0:
                time.sleep(gap)

    def sync(self) -> Lease | None:
        """Renew the lease, report the window, take the new allotment (and the controller's
        turn when it comes)."""
        with self._cond:
            window, self._window = self._window, Window()
            in_use, waiting = self._in_use, self._waiting
            # The most this process wanted since the last sync (a chunk's gap or its tail
            # does not give its share away for one sync), and a little room to grow; an idle
            # process holds nothing (its first call asks at once).
            wanted = max(self._demand_peak, in_use + waiting)
            demand = wanted + max(1, wanted // 8) if wanted else 0
            self._demand_peak = in_use + waiting
            report = Report(
                demand=demand,
                in_use=in_use,
                peak=self._peak,
                trailing_failures=window.trailing_failures,
                had_ok=window.ok > 0,
                fields=window.fields(),
                want_tokens=max(0, waiting + 2 - max(0, self._tokens)),
                urgent=window.dropped > 0,
            )
            self._peak = in_use
        try:
            lease = self.store.sync(self._tag, report, ttl_s=self.ttl_s)
        except redis.RedisError as exc:
            log.warning("flow_sync_failed", error=str(exc))
            return None
        now = time.monotonic()
        with self._cond:
            self._lease = lease
            self._allot = lease.allot
            self._valid_until = now + self.ttl_s * 0.8
            self._paused_until = now + lease.paused_s if lease.paused_s > 0 else 0.0
            if lease.tokens < 0:
                self._tokens = -1
            else:
                self._tokens = max(0, self._tokens) + lease.tokens
            if lease.mode == Mode.OPEN or lease.paused_s > 0:
                self._cond.notify_all()  # every waiter has to hear it
            elif (free := self._allot - self._in_use) > 0:
                self._cond.notify(free)
        if lease.turn:
            try:
                self.store.control()
            except redis.RedisError as exc:
                log.warning("flow_control_failed", error=str(exc))
        return lease

    def close(self) -> None:
        """Stop syncing (the lease expires by itself)."""
        self._stop.set()
        self._wake.set()
        if self._syncer is not None:
            self._syncer.join(1.0)
