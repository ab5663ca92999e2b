"""Retry timing: exponential backoff with full jitter, bounded by attempts and age. Pure.

Kept by hand (the CLI uses tenacity): this is a decision, not a loop. It returns *when* an
order's next attempt is due, which is written to the database (``next_attempt_at``) and taken by
whichever worker is free then; a retry decorator sleeps in the calling thread and forgets the
budget when the process dies.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A retry budget: ``max_attempts`` tries within ``max_age_s`` of the order's creation."""

    max_attempts: int
    max_age_s: float
    base_s: float
    cap_s: float


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Either wait ``delay_s`` before attempt number ``attempts + 1``, or give up."""

    give_up: bool
    delay_s: float = 0.0


def backoff_delay_s(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
    rand: random.Random | None = None,
) -> float:
    """Full-jitter delay for ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(n-1))].

    ``Retry-After`` from the upstream is a floor: we never come back earlier than asked.
    """
    ceiling = min(cap_s, base_s * (2 ** max(attempt - 1, 0)))
    delay = (rand or random).uniform(0.0, ceiling)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


def decide_retry(
    policy: RetryPolicy,
    attempts: int,
    *,
    age_s: float,
    retry_after_s: float | None = None,
    rand: random.Random | None = None,
) -> RetryDecision:
    """Decide what follows the failed attempt number ``attempts`` of an order ``age_s`` old."""
    if attempts >= policy.max_attempts:
        return RetryDecision(give_up=True)
    delay = backoff_delay_s(
        attempts, base_s=policy.base_s, cap_s=policy.cap_s, retry_after_s=retry_after_s, rand=rand
    )
    if age_s + delay > policy.max_age_s:
        return RetryDecision(give_up=True)
    return RetryDecision(give_up=False, delay_s=delay)
