"""The batch decisions (pure): the state a caller sees, the stop rule, the ETA, prices."""

from __future__ import annotations

from decimal import Decimal

import pytest

from schemas.batches import HaltOn
from worker.batches import rules
from worker.errors import InvalidInput

RULE = HaltOn(failed_share=0.2, after=10)


def test_state_shown_from_the_stored_one_and_the_counts() -> None:
    assert rules.shown_state("running", {"total": 3, "complete": 2, "received": 1}) == "running"
    assert rules.shown_state("running", {"total": 3, "complete": 2, "failed": 1}) == "completed"
    priced = {"total": 3, "previewed": 2, "failed": 1}
    assert rules.shown_state("awaiting_approval", priced) == "awaiting_approval"
    previewing = {"total": 3, "previewed": 2, "previewing": 1}
    assert rules.shown_state("awaiting_approval", previewing) == "running"
    assert rules.shown_state("halted", {"total": 3, "received": 3}) == "halted"


def test_halt_needs_after_final_orders_and_one_reason_past_the_share() -> None:
    failures = [("rejected", "upstream_400", 3)]
    assert rules.halt_verdict(RULE, 9, failures) is None  # not yet `after` final
    verdict = rules.halt_verdict(RULE, 10, failures)
    assert verdict is not None and (verdict.reason, verdict.failed) == ("upstream_400", 3)
    assert rules.halt_verdict(RULE, 15, failures) is None  # 3/15 is not above 0.2
    # Mixed reasons: no single one past the share.
    mixed = [("failed", "upstream_502", 2), ("rejected", "upstream_400", 2)]
    assert rules.halt_verdict(RULE, 10, mixed) is None
    assert rules.halt_verdict(None, 100, failures) is None


def test_may_halt_is_the_cheap_bound() -> None:
    assert not rules.may_halt(RULE, {"total": 20, "complete": 9, "rejected": 1})
    assert rules.may_halt(RULE, {"total": 20, "complete": 7, "rejected": 3})


def test_eta_only_while_running_with_a_pace() -> None:
    assert rules.eta_s("running", 100, 4.0) == 25.0
    assert rules.eta_s("running", 100, 0.0) is None
    assert rules.eta_s("halted", 100, 4.0) is None


def test_preview_amount_reads_the_first_payment() -> None:
    preview = {"schedule": [{"amount": "19.99", "currency": "gbp"}]}
    assert rules.preview_amount(preview) == ("GBP", Decimal("19.99"))
    assert rules.preview_amount({"schedule": [{"amount": 5}]}) is None
    assert rules.preview_amount({"preview": {}}) is None
    assert rules.preview_amount({"schedule": [{"amount": "NaN", "currency": "GBP"}]}) is None
    totals: dict[str, Decimal] = {}
    for p in (preview, preview, {"schedule": [{"amount": 1, "currency": "EUR"}]}):
        rules.add_totals(totals, rules.preview_amount(p))
    assert totals == {"GBP": Decimal("39.98"), "EUR": Decimal("1")}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": 3}, "mode"),
        ({"halt_on": {"failed_share": 0, "after": 1}}, "halt_on.failed_share"),
        ({"halt_on": {"failed_share": 0.5, "after": 0}}, "halt_on.after"),
        ({"halt_on": "often"}, "halt_on"),
    ],
)
def test_bad_options_name_their_field(body: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        rules.parse_options(body, default_halt_on=None)
    assert caught.value.fields[0]["field"] == field


def test_the_callers_default_rule_applies_when_none_is_given() -> None:
    assert rules.parse_options({}, default_halt_on=RULE).halt_on == RULE
    own = rules.parse_options({"halt_on": {"failed_share": 0.5, "after": 3}}, default_halt_on=RULE)
    assert own.halt_on == HaltOn(failed_share=0.5, after=3)
