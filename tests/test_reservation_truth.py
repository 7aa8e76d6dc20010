"""Reservation truth (issue 11, observation 1): a saved draft plan is not capacity we hold.

``plan SERIES.csv --save`` stores a draft; only ``plan apply --yes`` marks it bought, and only
a bought plan (plus what the clouds say we own and what the user declared) is reserved
capacity a placement may count on. Each unit taken says which source it came from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plan_cli import FAST, aws_reserved_offer, run, store_plan, stubbed_ec2, write_series

from prefect_cloudsched.adapters import purchase
from prefect_cloudsched.adapters.ledger import PLAN_BOUGHT, PLAN_DRAFT, Ledger
from prefect_cloudsched.adapters.reservations import (
    HeldReservations,
    held_reservations,
    plan_reservations,
)


def test_plan_save_stores_a_draft_that_adds_no_reserved_capacity(
    tmp_path: Path, capsys, ledger_url
) -> None:
    series = write_series(tmp_path / "a100.csv", [4.0 + (h % 24 >= 8) * 3.0 for h in range(72)])
    code, _, err = run(
        capsys, "plan", str(series), "--gpu-type", "A100", "--horizon", "24", *FAST, "--save"
    )
    assert code == 0, err
    assert "a draft" in err
    ledger = Ledger(ledger_url)
    saved = ledger.latest_plan()
    assert saved["purchase_status"] == PLAN_DRAFT and plan_reservations(saved)  # it has some
    assert ledger.bought_plan() is None
    held = held_reservations(owned={}, declared={}, ledger=ledger, use_plan=True)
    assert held.counts == {}  # before: every 1xA100 task went to "reserved" at $0


def test_apply_yes_marks_the_plan_bought_and_refuses_to_buy_it_twice(
    capsys, ledger_url, monkeypatch
) -> None:
    offer = aws_reserved_offer()
    plan_id = store_plan(ledger_url, (offer, 2))
    client = stubbed_ec2(offer, fixed=0.0, hourly=offer.usd_per_hour, purchase_expected=True)
    monkeypatch.setattr(purchase, "_boto3_client", lambda region: client)
    code, _, err = run(capsys, "plan", "apply", "--yes")
    assert code == 0, err
    ledger = Ledger(ledger_url)
    assert ledger.bought_plan()["id"] == plan_id
    assert ledger.latest_plan()["purchase_status"] == PLAN_BOUGHT
    held = held_reservations(owned={}, declared={}, ledger=ledger)
    assert held.counts == {offer.capacity_key: 2}
    assert held.take(offer.capacity_key) == "plan"
    code, _, err = run(capsys, "plan", "apply", "--yes", "--plan-id", str(plan_id))
    assert code == 2 and "already bought" in err


def test_a_dry_run_leaves_the_plan_a_draft(capsys, ledger_url) -> None:
    store_plan(ledger_url, (aws_reserved_offer(), 1))
    code, _, _ = run(capsys, "plan", "apply")
    assert code == 0 and Ledger(ledger_url).bought_plan() is None


def test_units_are_taken_owned_then_declared_then_plan_and_given_back() -> None:
    held = HeldReservations({"owned": {"k": 1}, "declared": {"k": 1, "j": 2}, "plan": {"k": 1}})
    assert held.counts == {"k": 3, "j": 2}
    assert [held.take("k") for _ in range(4)] == ["owned", "declared", "plan", None]
    held.give_back("k", "declared")
    assert held.sources("k") == {"declared": 1} and held.counts == {"k": 1, "j": 2}
    use_plan_off = held_reservations(owned={"k": 1}, declared={}, ledger=None, use_plan=False)
    assert use_plan_off.counts == {"k": 1}
    with pytest.raises(ValueError, match="unknown reservation source"):
        HeldReservations({"draft": {"k": 1}})
