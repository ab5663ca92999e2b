"""The latency rule: an upstream that slows down under our load is queueing our calls. Pure.

Compares the fleet's median time-to-answer over an interval with a baseline. The baseline
follows the upstream both ways: down within a few intervals (a lower median pulls it half way,
so one lucky interval of a jittery upstream does not set it), up when a cut proved the
slowdown is not ours, or at the minimum limit, where no cut can test anything. A cut is a
test: the limit goes down in proportion to the excess (Little's law; a quarter at least), and
if the median did not fall with it after ``verify_s``, the upstream got slower for everyone
(it moves over a day), so the baseline moves up to the new level and the limit goes back to
where it was. Only a slowdown that falls
when we send less is queueing; while cuts keep making it fall, the rule keeps cutting, which
finds the knee even when the first median it saw was already queued. The tolerance (``ratio``
and an absolute ``margin_s``) is wide enough that our own CPU and GIL noise on a 1 ms upstream
never crosses it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class LatencyConfig:
    ceiling: int
    min_limit: int = 4
    ratio: float = 1.4
    margin_s: float = 0.02
    verify_s: float = 0.75
    growth: float = 1.1
    max_cut: float = 0.75
    """A cut lowers the calls in flight by a quarter at least: enough for its effect on the
    median to stand out of the noise (and of the histogram's 10 % buckets)."""


@dataclass(frozen=True, slots=True)
class LatencyState:
    limit: float
    baseline_s: float = 0.0
    cut_from: float = 0.0
    """The limit before the pending cut (0: no cut pending)."""
    cut_ratio: float = 1.0
    """How much the pending cut lowered the calls in flight (new / old)."""
    cut_median_s: float = 0.0
    cut_at: float = 0.0
    cut_base: float = 0.0
    """The calls in flight (the interval's mean) the pending cut started from."""
    over: int = 0
    """Intervals in a row whose median was above the tolerance (a cut needs ``OVER_TO_CUT``)."""
    knee_known: bool = False
    """Whether a cut whose median did not fall showed the baseline to be the upstream's own
    (until then, the first median seen may have been queued: cuts go on while it falls)."""


# A slowdown must last this many intervals before a cut: one stalled moment of our own (a
# garbage collection, a busy core) never cuts, a queueing upstream stays slow.
OVER_TO_CUT = 2
# A cut's verdict waits until the calls in flight came down with it, at most this long.
SETTLE_MAX_S = 3.0
# A cut with no verdict this long after it (too few answers to judge: a slow upstream at a
# low limit answers a handful of calls a second) is abandoned: back to the limit before it.
# Without this a fleet at the minimum of a slow upstream could wait for a verdict for ever.
STALE_CUT_S = 6.0
# A cut that lowers the calls in flight by less than this share is no test (at the minimum
# there is nothing left to take off): the slowdown is taken for the upstream's own.
MIN_TEST_CUT = 0.1
# A median this many times the tolerance is a jump, not noise (see the first slow interval);
# a fleet whose mean in flight is under this share of its limit is still ramping up.
STRONG = 2.0
RAMPING = 0.5
# A lower median pulls the baseline this share of the way down (not all the way): one lucky
# interval of a jittery upstream does not set a baseline the next ones all exceed, and an
# upstream that really got faster is followed within a few intervals.
BASELINE_DOWN = 0.5


def initial_latency(cfg: LatencyConfig) -> LatencyState:
    return LatencyState(limit=float(cfg.ceiling))


def threshold_s(baseline_s: float, cfg: LatencyConfig) -> float:
    return max(baseline_s * cfg.ratio, baseline_s + cfg.margin_s)


def next_latency(
    state: LatencyState,
    *,
    median_s: float | None,
    in_flight: float,
    busy: bool,
    now: float,
    cfg: LatencyConfig,
    current: float | None = None,
) -> LatencyState:
    """The latency limit after an interval whose successful calls had ``median_s`` with
    ``in_flight`` calls out on average (Little's law over the interval, not a peak: a cut is
    only a test when it lowers what is really in flight); ``current`` is the fleet's limit
    now (both rules)."""
    ceiling = float(cfg.ceiling)
    limit = min(state.limit, ceiling)
    if median_s is None:
        # Too few answers to judge (they carry over to the next interval).
        if state.cut_from and now - state.cut_at > STALE_CUT_S:
            return _held(state, min(ceiling, state.cut_from), state.baseline_s)
        if busy and not state.cut_from and not state.over:
            # No sign of a slowdown: no reason to hold back a fleet that uses its limit.
            return replace(state, limit=min(ceiling, limit * cfg.growth + 1))
        return replace(state, limit=limit)
    baseline = state.baseline_s
    if baseline <= 0:
        baseline = median_s
    elif median_s < baseline:
        baseline -= BASELINE_DOWN * (baseline - median_s)
    high = threshold_s(baseline, cfg)
    if state.cut_from:
        if now - state.cut_at < max(cfg.verify_s, 4 * median_s):
            if now - state.cut_at > STALE_CUT_S:
                return LatencyState(limit=min(ceiling, state.cut_from), baseline_s=median_s)
            return replace(state, limit=limit, baseline_s=baseline)
        if in_flight > state.cut_base * (1 - 0.5 * (1 - state.cut_ratio)):
            # The calls in flight have not come down yet (a queueing upstream holds the
            # calls sent before the cut for a while): no verdict on a median of that moment.
            if now - state.cut_at < SETTLE_MAX_S:
                return replace(state, limit=limit, baseline_s=baseline)
            # They never came down (fewer than the limit, or more work came): no test.
            # Still slow: cut from what is in flight now.
            if median_s > high:
                return _cut(state, limit, median_s, in_flight, baseline, high, now, cfg, test=True)
            return _held(state, limit, baseline)
        # Queueing: the median fell with the calls in flight (half of that at least).
        fell = median_s <= state.cut_median_s * (1 - 0.5 * (1 - state.cut_ratio))
        if not fell:
            # Sending less did not make it faster: this is the upstream's own latency now
            # (slower for everyone, or the level below the knee): the new baseline, and back
            # to the calls in flight before the cut (not to a limit nobody was using).
            back = min(state.cut_from, max(limit, state.cut_base))
            return LatencyState(limit=back, baseline_s=median_s, knee_known=True)
        passed = median_s < 0.5 * state.cut_ratio * state.cut_median_s
        if median_s <= high and (state.knee_known or passed):
            # Back within the tolerance: far below what the cut alone explains (queueing
            # falls in proportion to the calls in flight), the slow moment passed; or of a
            # baseline an earlier cut showed to be the upstream's own, the cut found the knee
            # again. Hold here and grow again from the next interval; a second cut would take
            # the fleet below the knee and leave the upstream's capacity idle for its verdict.
            return _held(state, limit, baseline)
        # It fell but is still high, or the baseline may have been seen while queueing: past
        # the knee, so keep going down until it stops falling.
        return _cut(state, limit, median_s, in_flight, baseline, high, now, cfg)
    if median_s <= high:
        grown = min(ceiling, limit * cfg.growth + 1) if busy else limit
        return _held(state, grown, baseline)
    if state.over + 1 < OVER_TO_CUT:
        # Not a cut yet, but no growth past what is in flight either (the loss rule's slow
        # start would otherwise double the calls into a queue while this one waits). Except
        # for a small excess (a jittery upstream, our own CPU for a moment) while the fleet
        # uses far less than its limit (still ramping up): that only stops growth, or one
        # noisy interval would take away the room the fleet is growing into.
        ramping = current is not None and in_flight < RAMPING * current
        if median_s <= STRONG * high and ramping:
            held = min(limit, current or limit)
        else:
            held = max(float(cfg.min_limit), min(limit, in_flight)) if in_flight else limit
        return _held(state, held, baseline, over=state.over + 1)
    return _cut(state, limit, median_s, in_flight, baseline, high, now, cfg, test=True)


def _held(state: LatencyState, limit: float, baseline_s: float, over: int = 0) -> LatencyState:
    """No cut pending: ``limit`` and ``baseline_s``, what the state knew of the knee kept."""
    return LatencyState(limit=limit, baseline_s=baseline_s, over=over, knee_known=state.knee_known)


def _cut(
    state: LatencyState,
    limit: float,
    median_s: float,
    in_flight: float,
    baseline_s: float,
    high_s: float,
    now: float,
    cfg: LatencyConfig,
    *,
    test: bool = False,
) -> LatencyState:
    """Lower the limit below what is in flight. A ``test`` (the first cut of a slowdown)
    takes a quarter off: enough to see whether the median falls with it, cheap when the
    upstream merely got slower for everyone. Once a cut proved queueing, the next ones go in
    proportion to the excess (Little's law), half at most."""
    base = min(limit, float(in_flight)) if in_flight else limit
    factor = cfg.max_cut if test else min(cfg.max_cut, max(0.5, high_s / median_s))
    cut = max(float(cfg.min_limit), base * factor)
    if cut > base * (1 - MIN_TEST_CUT):
        # Nothing left to take off (the minimum): no test can tell queueing from a slower
        # upstream here, and waiting for a verdict that cannot come stalls the fleet. The
        # upstream is this slow: the new baseline, and the limit stays where it is.
        return LatencyState(limit=max(limit, cut), baseline_s=median_s, knee_known=True)
    return LatencyState(
        limit=cut,
        baseline_s=baseline_s,
        cut_from=limit,
        cut_ratio=min(1.0, cut / base) if base else 1.0,
        cut_median_s=median_s,
        cut_at=now,
        cut_base=base,
        knee_known=state.knee_known,
    )
