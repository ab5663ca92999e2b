"""Fair shares of dispatch slots: equal by weight, capped by need, no slot left empty."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.queue.fairshare import shares


def test_a_big_backlog_buys_no_more_than_an_equal_share() -> None:
    """10,000 waiting and 20 waiting share 100 slots equally."""
    assert shares(100, {"a": 10_000, "b": 20}, {}) == {"a": 80, "b": 20}
    assert shares(40, {"a": 10_000, "b": 20}, {}) == {"a": 20, "b": 20}
    assert shares(10, {"a": 10_000, "b": 20, "c": 5}, {}) in (
        {"a": 4, "b": 3, "c": 3},
        {"a": 3, "b": 4, "c": 3},
        {"a": 3, "b": 3, "c": 4},
    )


def test_weights_share_in_proportion() -> None:
    """A caller of weight 3 gets three times the share of a caller of weight 1."""
    assert shares(100, {"a": 1000, "b": 1000}, {"a": 3}) == {"a": 75, "b": 25}


def test_fewer_slots_than_callers_rotate() -> None:
    """One slot, three callers: who gets it moves with ``rotate``."""
    winners = {next(iter(shares(1, {"a": 5, "b": 5, "c": 5}, {}, rotate=r))) for r in range(3)}
    assert winners == {"a", "b", "c"}


def test_nothing_wanted_or_no_room() -> None:
    assert shares(0, {"a": 5}, {}) == {}
    assert shares(10, {"a": 0}, {}) == {}


@given(
    free=st.integers(0, 500),
    wanted=st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 300), max_size=6),
    weights=st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 5), max_size=6),
    rotate=st.integers(0, 10),
)
def test_shares_fill_what_they_can_and_never_exceed_needs(free, wanted, weights, rotate) -> None:
    """Every slot is used while anyone has work; nobody gets more than it wants."""
    out = shares(free, wanted, weights, rotate=rotate)
    assert sum(out.values()) == min(free, sum(wanted.values()))
    assert all(0 < n <= wanted[c] for c, n in out.items())
    # Max-min fairness (weight 1): a caller left short never has less than another's share.
    if not weights:
        short = [c for c in wanted if out.get(c, 0) < wanted[c]]
        for c in short:
            assert all(out.get(c, 0) >= out[d] - 1 for d in out)
