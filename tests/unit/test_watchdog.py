"""The stall decision of the worker watchdog (pure)."""

from __future__ import annotations

import pytest

from worker.queue.watchdog import STALL_MIN_S, Observation, is_stalled, stall_after_s

NOW = 1_000_000.0


def seen(**changes: object) -> Observation:
    base: dict[str, object] = {
        "now": NOW,
        "last_received_at": NOW - 60,
        "holding_tasks": 0,
        "queue_length": 5,
        "last_sweep_at": NOW - 60,
    }
    base.update(changes)
    return Observation(**base)  # type: ignore[arg-type]


def test_idle_with_work_waiting_and_no_sweep_is_a_stall() -> None:
    assert is_stalled(seen(), limit_s=30)
    assert is_stalled(seen(last_sweep_at=None), limit_s=30)


@pytest.mark.parametrize(
    "change",
    [
        {"holding_tasks": 1},  # busy on a long chunk: not a stall
        {"queue_length": 0},  # nothing to consume
        {"last_received_at": NOW - 10},  # fetched recently
        {"last_sweep_at": NOW - 10},  # some worker is sweeping: the fleet consumes
    ],
)
def test_not_a_stall(change: dict[str, object]) -> None:
    assert not is_stalled(seen(**change), limit_s=30)


def test_limit_scales_with_the_sweep_interval_above_a_floor() -> None:
    assert stall_after_s(1.0) == STALL_MIN_S
    assert stall_after_s(10.0) == 60.0
