"""The fleet's shared view of the upstream, and the controller that moves it. Pure.

One process at a time (whoever holds the controller's turn in Redis) reads the fleet's totals
of the last interval and calls :func:`decide`; the result is stored in one Redis hash and every
process's sync script reads its ``limit``, ``mode``, ``paused_until`` and ``epoch``.
All times are Redis server time (seconds), never a host's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from worker.flow.breaker import BreakerConfig, BreakerState, Mode, next_breaker
from worker.flow.latency import LatencyConfig, LatencyState, initial_latency, next_latency
from worker.flow.loss import LossConfig, LossState, initial_loss, next_loss, restart
from worker.flow.window import Totals, clamp_retry_after_s

# A Retry-After up to this long delays only the call it answered (its order waits it out);
# longer ones pause the whole fleet.
LONG_RETRY_AFTER_S = 2.0
# Refusals in this many intervals in a row after a cut pause the fleet as well: the cuts alone
# are not relieving the upstream.
REFUSED_INTERVALS_TO_PAUSE = 4
# The fleet uses its limit when its peak in flight reaches this share of it.
BUSY_SHARE = 0.5
# No call at all for this long: the latency baseline is forgotten and the loss limit comes back
# to the level last refused, or to the slow start when none was (the idea of TCP's congestion
# window validation, RFC 7661: a window not used is not known to be safe).
IDLE_FORGET_S = 1.0
# The latency rule reads this quantile of the interval's answer times: our own GIL and CPU
# delays inflate some answers (the upper part), upstream queueing delays all of them.
LATENCY_QUANTILE = 0.25
# The latency rule judges no fewer answers than this. An interval with fewer (a slow upstream
# at a low limit) carries its answers over to the next one, for at most LATENCY_CARRY_MAX
# intervals: a verdict always comes, on enough answers to tell a shift from jitter.
LATENCY_MIN_SAMPLES = 16
LATENCY_CARRY_MAX = 24


@dataclass(frozen=True, slots=True)
class FlowConfig:
    ceiling: int
    max_rps: float = 0.0
    interval_s: float = 0.25
    breaker: BreakerConfig = field(default_factory=BreakerConfig)

    @property
    def loss(self) -> LossConfig:
        return LossConfig(ceiling=self.ceiling)

    @property
    def latency(self) -> LatencyConfig:
        return LatencyConfig(ceiling=self.ceiling)


class Verdict(StrEnum):
    GO = "go"
    WAIT = "wait"
    PROBE = "probe"


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a call may start: ``go``, ``wait`` (``wait_s``), or ``probe`` only."""

    kind: Verdict
    wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FlowState:
    loss: LossState
    latency: LatencyState
    breaker: BreakerState = field(default_factory=BreakerState)
    paused_until: float = 0.0
    ramp: float = 0.0
    """After an outage: the limit climbs from half its old level, doubling each interval."""
    ramp_to: float = 0.0
    """The level the climb heads for; kept one interval after the climb ends (the processes'
    peaks in flight, reported at their syncs, lag a limit that doubles each interval)."""
    refused_intervals: int = 0
    version: int = 0
    idle_since: float = 0.0
    """When the fleet last stopped calling (0: it is calling)."""

    @property
    def limit(self) -> int:
        """Calls the fleet may have in flight (the configured ceiling applies on top)."""
        value = min(self.loss.limit, self.latency.limit)
        if self.ramp:
            value = min(value, self.ramp)
        return max(1, int(value))

    @property
    def target(self) -> int:
        """The level the limit is heading for (what chunks are sized from during a ramp)."""
        return max(self.limit, int(self.ramp_to)) if self.ramp else self.limit

    def to_fields(self) -> dict[str, str]:
        lo, la, br = self.loss, self.latency, self.breaker
        values: dict[str, float | str] = {
            "limit": self.limit,
            "target": self.target,
            "loss_limit": lo.limit,
            "w_max": lo.w_max,
            "loss_cut_at": lo.cut_at,
            "lat_limit": la.limit,
            "baseline_s": la.baseline_s,
            "cut_from": la.cut_from,
            "cut_ratio": la.cut_ratio,
            "cut_median_s": la.cut_median_s,
            "lat_cut_at": la.cut_at,
            "cut_base": la.cut_base,
            "lat_over": la.over,
            "lat_knee": int(la.knee_known),
            "mode": str(br.mode),
            "since": br.since,
            "epoch": br.epoch,
            "br_at": br.at,
            "br_ok": br.ok,
            "br_failed": br.failed,
            "paused_until": self.paused_until,
            "ramp": self.ramp,
            "ramp_to": self.ramp_to,
            "refused_intervals": self.refused_intervals,
            "version": self.version,
            "idle_since": self.idle_since,
        }
        return {k: (v if isinstance(v, str) else repr(v)) for k, v in values.items()}

    @classmethod
    def from_fields(cls, raw: Mapping[str, str], cfg: FlowConfig) -> FlowState:
        """Parse the hash; an empty or damaged hash is the initial state."""
        try:
            f = {k: float(v) for k, v in raw.items() if k != "mode"}
            return cls(
                LossState(f["loss_limit"], f["w_max"], f["loss_cut_at"]),
                LatencyState(
                    f["lat_limit"],
                    f["baseline_s"],
                    f["cut_from"],
                    f["cut_ratio"],
                    f["cut_median_s"],
                    f["lat_cut_at"],
                    f["cut_base"],
                    int(f["lat_over"]),
                    bool(f.get("lat_knee", 0.0)),
                ),
                BreakerState(
                    Mode(raw["mode"]),
                    f["since"],
                    int(f["epoch"]),
                    f["br_at"],
                    f["br_ok"],
                    f["br_failed"],
                ),
                f["paused_until"],
                f["ramp"],
                f["ramp_to"],
                int(f["refused_intervals"]),
                int(f["version"]),
                f.get("idle_since", 0.0),
            )
        except (KeyError, ValueError):
            return initial_state(cfg)


def initial_state(cfg: FlowConfig) -> FlowState:
    return FlowState(initial_loss(cfg.loss), initial_latency(cfg.latency))


def decide(state: FlowState, totals: Totals, now: float, cfg: FlowConfig) -> FlowState:
    """The shared state after one interval whose fleet-wide results were ``totals``."""
    breaker = next_breaker(state.breaker, totals, now, cfg.breaker)
    version = state.version + 1
    if breaker.mode is Mode.OPEN:
        return replace(state, breaker=breaker, ramp=0.0, refused_intervals=0, version=version)
    limit = state.limit
    busy = totals.in_flight_peak >= BUSY_SHARE * limit
    calling = bool(totals.in_flight_peak or totals.ok or totals.losses or totals.failures)
    idle_since = 0.0 if calling else (state.idle_since or now)
    if idle_since and now - idle_since >= IDLE_FORGET_S:
        # Nobody called the upstream for a while: what was learnt of its speed may be stale
        # (it may have slowed down meanwhile). Forget the latency baseline (the next answers
        # set it; the limit a queue taught stays) and bring the loss limit back to the level
        # last refused (the slow start when none was) rather than bursting at a limit grown
        # against a fast upstream.
        latency = LatencyState(limit=state.latency.limit)
        state = replace(state, latency=latency, loss=restart(state.loss, now=now, cfg=cfg.loss))
    refused_at = totals.in_flight_peak
    if state.ramp_to:
        # Climbing back after an outage (or one interval after): the peaks the processes
        # reported lag the doubling limit (a refusal at 17 calls read as 11 set the curve's
        # plateau there for 3 s, row f): the level refused is at least what the climb allowed.
        refused_at = max(refused_at, min(limit, int(state.ramp_to)))
    loss = next_loss(
        state.loss,
        losses=totals.losses,
        in_flight=refused_at,
        busy=busy,
        now=now,
        cfg=cfg.loss,
    )
    in_flight = totals.mean_in_flight(now, cfg.interval_s)
    if state.idle_since:
        # The fleet began calling again within this interval: the pause before dilutes the
        # mean (a run that meets a slower upstream was held at a handful of calls and
        # regrew 10 % an interval); what it reached is its peak.
        in_flight = max(in_flight, float(totals.in_flight_peak))
    latency = next_latency(
        state.latency,
        median_s=totals.percentile_s(LATENCY_QUANTILE, min_samples=LATENCY_MIN_SAMPLES),
        in_flight=in_flight,
        busy=busy,
        now=now,
        cfg=cfg.latency,
        current=limit,
    )
    ramp, ramp_to = state.ramp, state.ramp_to
    if state.breaker.mode is Mode.OPEN:
        # A probe answered: start again at half the old level and double each interval.
        ramp_to = float(min(state.loss.limit, state.latency.limit))
        ramp = max(1.0, ramp_to / 2)
    elif ramp:
        ramp = ramp * 2
        if ramp >= ramp_to:
            ramp = 0.0  # ramp_to stays for one more interval (see refused_at above)
    elif ramp_to:
        ramp_to = 0.0
    refused = state.refused_intervals + 1 if totals.dropped else 0
    paused_until = state.paused_until
    retry_after = clamp_retry_after_s(totals.retry_after_s) or 0.0
    if totals.dropped and (
        retry_after > LONG_RETRY_AFTER_S or refused >= REFUSED_INTERVALS_TO_PAUSE
    ):
        # The upstream means it: everyone waits (at least a second when it named no time).
        paused_until = max(paused_until, now + max(retry_after, 1.0))
        refused = 0
    return FlowState(
        loss, latency, breaker, paused_until, ramp, ramp_to, refused, version, idle_since
    )


def admission(mode: Mode, paused_s: float) -> Admission:
    """What the shared state (as a process last saw it) allows a new call now."""
    if paused_s > 0:
        return Admission(Verdict.WAIT, paused_s)
    if mode is Mode.OPEN:
        return Admission(Verdict.PROBE)
    return Admission(Verdict.GO)
