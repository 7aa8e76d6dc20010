"""Budget caps, holds and the spot share (pure: no Prefect runtime)."""

from __future__ import annotations

import pickle
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefect_cloudsched.core.budget import (
    DAY_CAP,
    MONTH_CAP,
    RUN_CAP,
    BudgetExceeded,
    BudgetPolicy,
    BudgetTracker,
    month_start,
    spend_windows,
)
from prefect_cloudsched.core.records import PlacementRecord, to_micro
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.testing.records import placement_record

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def _record(started: datetime, cost_usd: float) -> PlacementRecord:
    return placement_record(cost_usd=cost_usd, baseline_usd=cost_usd, started_at=started)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"per_run_usd": -1.0}, "per_run_usd"),
        ({"per_day_usd": 0.0}, "per_day_usd"),
        ({"spot_max_share": 1.5}, "spot_max_share"),
        ({"spot_max_share": -0.1}, "spot_max_share"),
    ],
)
def test_policy_rejects_bad_values_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError, match=field):
        BudgetPolicy(**kwargs)


def test_hard_cap_refuses_the_placement_that_would_cross_it() -> None:
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=1.0))
    first, overruns = tracker.admit(to_micro(0.6))
    assert first is not None and overruns == []
    refused, overruns = tracker.admit(to_micro(0.5))  # 0.6 held + 0.5 > 1.0
    assert refused is None
    assert [o.cap for o in overruns] == [RUN_CAP]
    assert overruns[0].total_micro == to_micro(1.1)
    tracker.settle(first, to_micro(0.3))  # it really cost less than expected
    second, overruns = tracker.admit(to_micro(0.5))
    assert second is not None and overruns == []
    assert tracker.spent_micro == to_micro(0.3)
    assert tracker.in_flight_micro == to_micro(0.5)


def test_exactly_reaching_a_cap_is_allowed() -> None:
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=1.0))
    assert tracker.admit(to_micro(1.0))[0] is not None
    assert tracker.admit(1)[0] is None


def test_day_and_month_caps_count_the_ledger_history() -> None:
    policy = BudgetPolicy(overrun_factor=1.0, per_day_usd=10.0, per_month_usd=100.0)
    tracker = BudgetTracker(
        policy, spent_today_micro=to_micro(9.5), spent_month_micro=to_micro(20.0)
    )
    hold, overruns = tracker.admit(to_micro(1.0))
    assert hold is None
    assert [o.cap for o in overruns] == [DAY_CAP]
    assert overruns[0].committed_micro == to_micro(9.5)
    tracker = BudgetTracker(
        policy, spent_today_micro=to_micro(1.0), spent_month_micro=to_micro(99.5)
    )
    assert [o.cap for o in tracker.check(to_micro(1.0))] == [MONTH_CAP]


def test_soft_cap_admits_and_reports_each_cap_once() -> None:
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=1.0, hard=False))
    tracker.admit(to_micro(0.9))
    hold, overruns = tracker.admit(to_micro(0.5))
    assert hold is not None and [o.cap for o in overruns] == [RUN_CAP]
    assert tracker.first_report(overruns) == overruns
    _, again = tracker.admit(to_micro(0.5))
    assert again and tracker.first_report(again) == []


def test_release_drops_a_hold_without_spending() -> None:
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=1.0))
    hold, _ = tracker.admit(to_micro(0.8))
    tracker.release(hold)
    assert tracker.in_flight_micro == 0 and tracker.spent_micro == 0
    assert tracker.admit(to_micro(0.8))[0] is not None


def test_concurrent_admissions_never_exceed_a_hard_cap() -> None:
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=1.0))
    admitted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            hold, _ = tracker.admit(to_micro(0.03))
            if hold is not None:
                with lock:
                    admitted.append(hold)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 33  # floor(1.00 / 0.03)
    assert tracker.in_flight_micro <= to_micro(1.0)


def test_budget_exceeded_is_one_line_naming_cap_numbers_and_fix() -> None:
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=2.0))
    tracker.settle(None, to_micro(1.5))
    _, overruns = tracker.admit(to_micro(0.75))
    error = BudgetExceeded("train", overruns[0])
    text = str(error)
    assert "\n" not in text
    for part in ("train", "budget_per_run_usd", "$2.00", "$1.50", "$0.75 expected", "$2.25"):
        assert part in text
    assert "budget_enforcement=soft" in text
    assert str(pickle.loads(pickle.dumps(error))) == text


@pytest.mark.parametrize(
    ("share", "expected_spot"),
    [(0.0, 0), (0.5, 5), (0.3, 3), (1.0, 10)],
)
def test_spot_share_cap(share: float, expected_spot: int) -> None:
    tracker = BudgetTracker(BudgetPolicy(spot_max_share=share))
    spot = 0
    for _ in range(10):
        allowed = tracker.spot_allowed()
        tracker.count_placement(spot=allowed)
        spot += allowed
    assert spot == expected_spot


@given(
    share=st.floats(0, 1),
    wants=st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_spot_share_never_exceeded(share: float, wants: list[bool]) -> None:
    tracker = BudgetTracker(BudgetPolicy(spot_max_share=share))
    spot = total = 0
    for want in wants:
        use = want and tracker.spot_allowed()
        tracker.count_placement(spot=use)
        spot, total = spot + use, total + 1
        assert spot <= share * total + 1e-9


def test_spend_windows_split_day_and_month() -> None:
    records = [
        _record(NOW - timedelta(hours=1), 1.0),  # today
        _record(NOW - timedelta(days=3), 2.0),  # this month
        _record(NOW - timedelta(days=40), 4.0),  # last month
    ]
    assert spend_windows(records, NOW) == (to_micro(1.0), to_micro(3.0))
    assert month_start(NOW) == datetime(2026, 3, 1, tzinfo=UTC)


def test_small_amounts_keep_their_fractions_of_a_cent() -> None:
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=0.0021))
    _, overruns = tracker.admit(to_micro(0.0035))
    assert "$0.0021 would be crossed" in overruns[0].describe()
    assert "$0.0035 expected" in overruns[0].describe()


def test_caps_micro_lists_only_set_caps() -> None:
    assert BudgetPolicy(per_month_usd=12.5).caps_micro() == {MONTH_CAP: 12_500_000}
    assert not BudgetPolicy().needs_history
    assert BudgetPolicy(per_day_usd=1).needs_history


# ---------------------------------------------------------------- hard means hard (issue 11, 3)
def test_worst_case_hold_and_exact_cost_round_up() -> None:
    from prefect_cloudsched.core.budget import cost_micro, worst_case_micro

    assert cost_micro(3_600_000, 1.0) == 1_000 and cost_micro(1, 1.0) == 1  # never below a bill
    assert cost_micro(98_320_000, 0) == 0
    # 8xH100 at $98.32/h estimated at 1 s: the hold covers 2 s + a 0.5 s check interval
    assert worst_case_micro(98_320_000, 1.0, check_interval_s=0.5) == cost_micro(98_320_000, 2.5)
    with pytest.raises(ValueError, match="overrun_factor"):
        worst_case_micro(1, 1.0, overrun_factor=0.5)


def test_a_running_task_is_stopped_before_a_hard_cap_is_crossed() -> None:
    """The $0.05 cap and 1 s-estimated, 3 s-running 8xH100 tasks of the issue: extending each
    hold as the task accrues cost is refused before the cap would be crossed."""
    from prefect_cloudsched.core.budget import cost_micro

    price, cap = 98_320_000, to_micro(0.05)
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=0.05))
    running: dict[int, float] = {}
    for _ in range(8):
        hold, _ = tracker.admit(cost_micro(price, 1.0))
        if hold is not None:
            running[hold] = 1.0
    stopped = 0
    for tick in (1.5, 2.0, 2.5, 3.0):  # the running check every 0.5 s
        for hold in list(running):
            if tracker.extend(hold, cost_micro(price, tick)):
                tracker.settle(hold, cost_micro(price, running.pop(hold)))  # stopped here
                stopped += 1
            else:
                running[hold] = tick
    for hold, seconds in running.items():
        tracker.settle(hold, cost_micro(price, seconds))
    assert stopped > 0
    assert tracker.spent_micro <= cap  # before: $0.138 spent, 2.77x the cap


def test_headroom_under_a_soft_cap_can_go_negative() -> None:
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=1.0, hard=False))
    hold, _ = tracker.admit(to_micro(0.9))
    assert tracker.headroom_micro() == to_micro(0.1)
    assert tracker.extend(hold, to_micro(1.2)) == []  # soft: raised anyway
    assert tracker.in_flight_micro == to_micro(1.2)
    assert tracker.headroom_micro() == to_micro(-0.2)


def test_shared_windows_leave_day_and_month_to_the_ledger() -> None:
    policy = BudgetPolicy(overrun_factor=1.0, per_run_usd=1.0, per_day_usd=0.5, per_month_usd=2.0)
    assert policy.window_caps_micro() == {DAY_CAP: to_micro(0.5), MONTH_CAP: to_micro(2.0)}
    local = BudgetTracker(policy, spent_today_micro=to_micro(0.4))
    assert local.admit(to_micro(0.2))[0] is None  # the day cap, checked in this process
    shared = BudgetTracker(policy, spent_today_micro=to_micro(0.4), shared_windows=True)
    hold, overruns = shared.admit(to_micro(0.2))
    assert hold is not None and overruns == []
    assert shared.headroom_micro() == to_micro(0.8)
    day_only = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_day_usd=1.0), shared_windows=True)
    assert day_only.headroom_micro() is None


# ------------------------------------------------- the refusal labels each number (audit 6 Dec)
def test_a_refusal_names_the_hold_and_the_expected_cost_apart() -> None:
    tracker = BudgetTracker(BudgetPolicy(per_run_usd=1.0))  # hard, overrun_factor 2
    hold, overruns = tracker.admit(to_micro(0.917))
    assert hold is None
    text = str(BudgetExceeded("big", overruns[0]))
    assert text.startswith("big: refused, budget_per_run_usd $1.00 would be crossed: ")
    assert "$0.00 spent or in flight + $1.834 held for this task" in text
    assert "(2× its $0.917 expected cost, in case it runs longer than estimated) = $1.834" in text
    payload = overruns[0].to_dict()
    assert payload["expected_usd"] == 0.917 and payload["held_usd"] == 1.834
    assert payload["total_usd"] == payload["committed_usd"] + payload["held_usd"]
    assert payload["stopped"] is False


def test_a_hold_raised_to_the_launch_minimum_says_so() -> None:
    tracker = BudgetTracker(BudgetPolicy(per_run_usd=1.0))
    _, overruns = tracker.admit(to_micro(0.3), floor_micro=to_micro(1.1))
    assert "$1.10 held for this task (its $0.30 expected cost, raised to the least its " in (
        overruns[0].describe()
    )


def test_an_attempt_stopped_by_the_cap_while_running_is_not_called_refused() -> None:
    tracker = BudgetTracker(BudgetPolicy(per_run_usd=1.0))
    hold, _ = tracker.admit(to_micro(0.4))
    overruns = tracker.extend(hold, to_micro(1.2))
    text = str(BudgetExceeded("big", overruns[0]))
    assert text.startswith("big: stopped while running, budget_per_run_usd $1.00")
    assert "+ $0.40 more for this task to keep running = $1.20" in text
    assert "refused" not in text and overruns[0].to_dict()["stopped"] is True
    assert str(pickle.loads(pickle.dumps(BudgetExceeded("big", overruns[0])))) == text


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "$0.00"),
        (1, "$0.000001"),
        (10_000, "$0.01"),
        (1_834_000, "$1.834"),
        (5_000_000, "$5.00"),
    ],
)
def test_money_is_exact_with_at_least_cents(micro: int, text: str) -> None:
    from prefect_cloudsched.core.budget import _usd

    assert _usd(micro) == text
