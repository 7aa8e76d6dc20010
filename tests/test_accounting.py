"""One accounting model: decide(), packing, ledger rows, the report and the simulator agree,
and every row dearer than its on-demand baseline says why."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from prefect_cloudsched.core.accounting import (
    EGRESS,
    FELL_BACK,
    INTERRUPTED,
    OVERRAN,
    RESERVATION,
    SHARED_IDLE,
    UNEXPLAINED,
    charge_micro,
    charge_usd,
    dearer_reasons,
    idle_commitment_usd,
)
from prefect_cloudsched.core.budget import BudgetExceeded, BudgetPolicy, BudgetTracker
from prefect_cloudsched.core.catalog import Catalog, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.planning.packing import PackTask, pack_tasks
from prefect_cloudsched.core.policy import PlacementState, cost_of, decide
from prefect_cloudsched.core.policy.admission import OfferUnavailable, admit, start_with_fallback
from prefect_cloudsched.core.records import to_micro
from prefect_cloudsched.core.report import (
    build_report,
    render_csv,
    render_json,
    render_markdown,
    render_rich,
)
from prefect_cloudsched.testing.offers import make_offer
from prefect_cloudsched.testing.records import placement_record

OD, SPOT, RES = PurchaseOption.ON_DEMAND, PurchaseOption.SPOT, PurchaseOption.RESERVED
NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def catalog() -> Catalog:
    return Catalog(
        [
            make_offer("g1", OD, 1.0, gpus=1, gpu="A100"),
            make_offer("g1", SPOT, 0.3, od=1.0, gpus=1, gpu="A100", band="<5%"),
            make_offer("g4", OD, 4.0, gpus=4, gpu="A100"),
            make_offer("g4", RES, 2.4, od=4.0, gpus=4, gpu="A100"),
        ]
    )


NEEDS = TaskNeeds(gpus=1, gpu_type="A100", cpus=2, memory_gib=8, est_runtime=HOUR, spot_ok=True)


# --------------------------------------------------------------------------- one model
def test_a_reservation_is_ranked_at_marginal_zero_but_charged_its_amortised_rate_everywhere():
    """decide(), the row charge, a packed bin and the budget hold all count 2.4/h."""
    cat = catalog()
    state = PlacementState(reserved_free={"aws/us-east-1/g4": 1})
    decision = decide(NEEDS, cat, now=NOW, state=state)
    assert decision.offer.option is RES  # taken before 0.3/h spot: it is paid anyway
    assert decision.marginal_cost == 0.0
    assert decision.expected_cost == pytest.approx(2.4)  # what its row will be charged
    # the runtime's row charge for the estimated hour is that same amount, to the micro-dollar
    assert to_micro(cost_of(decision.offer, 3600)) == to_micro(decision.expected_cost)
    assert charge_micro(decision.offer, 3600) == to_micro(decision.expected_cost)
    assert json.loads(json.dumps(decision.to_dict()))["marginal_cost"] == 0.0
    # four such tasks packed onto the reservation: one bin charged 2.4, not 0
    tasks = [PackTask(f"t{i}", NEEDS) for i in range(4)]
    packed = pack_tasks(tasks, cat, reserved_free={"aws/us-east-1/g4": 1}, now=NOW)
    (bin_,) = packed.bins
    assert bin_.offer.option is RES and bin_.cost == pytest.approx(2.4)
    # alone: the first on the whole reservation (2.4), three on spot: packing saves the spot
    assert packed.alone_cost == pytest.approx(2.4 + 3 * decide(NEEDS, cat, now=NOW).expected_cost)


def test_a_shared_member_is_charged_its_share_and_the_idle_commitment_is_apart():
    g4 = catalog().find("aws/us-east-1/g4/reserved")
    assert charge_usd(g4, 3600, share=0.25) == pytest.approx(0.6)
    # one reservation held 10 h, busy 4 h: 24 paid, 9.6 charged to tasks, 14.4 idle
    assert idle_commitment_usd(g4, 1, 10 * 3600, 4 * 3600) == pytest.approx(14.4)


def test_a_start_fallback_is_marked_with_the_first_choice():
    cat = catalog()
    first = decide(NEEDS, cat, now=NOW)
    assert first.offer.option is SPOT and first.fell_back_from is None
    state = PlacementState()
    tried: list[str] = []

    def start(decision):
        tried.append(decision.offer.key)
        if decision.offer.option is SPOT:
            state.block(decision.offer.key, "capacity")
            raise OfferUnavailable(decision.offer.key)
        return decision

    ran = start_with_fallback(
        first,
        NEEDS,
        start,
        lambda n: decide(n, cat, now=NOW, state=state),
        what="t",
        blocked=lambda: sorted(state.blocked),
    )
    assert ran.offer.key == "aws/us-east-1/g1/on-demand"
    assert ran.fell_back_from == first.offer.key
    assert ran.to_dict()["fell_back_from"] == first.offer.key


def test_a_reserved_placement_holds_the_budget_it_will_be_charged():
    """Before: held at $0, settled at the amortised rate, so a hard cap could be crossed."""
    cat = catalog()
    state = PlacementState(reserved_free={"aws/us-east-1/g4": 1})
    decision = decide(NEEDS, cat, now=NOW, state=state)
    tracker = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=2.0))
    with pytest.raises(BudgetExceeded):  # 2.4 expected > the 2.0 cap
        admit(decision, NEEDS, tracker, lambda n, **_: decide(n, cat, now=NOW), task_name="t")
    roomy = BudgetTracker(BudgetPolicy(overrun_factor=1.0, per_run_usd=3.0))
    admitted = admit(decision, NEEDS, roomy, lambda n, **_: decide(n, cat, now=NOW), task_name="t")
    assert admitted.decision.offer.option is RES and admitted.hold is not None
    assert roomy.in_flight_micro == to_micro(2.4) == charge_micro(decision.offer, 3600)


def test_the_spot_share_cap_marks_its_on_demand_placement_as_a_fallback():
    cat = catalog()
    first = decide(NEEDS, cat, now=NOW)
    tracker = BudgetTracker(BudgetPolicy(spot_max_share=0.0))
    admitted = admit(first, NEEDS, tracker, lambda n, **_: decide(n, cat, now=NOW), task_name="t")
    assert admitted.decision.offer.option is OD
    assert admitted.decision.fell_back_from == first.offer.key


# --------------------------------------------------------------------------- why dearer
def row(task: str = "embed", *, cost: float, base: float, **columns):
    return placement_record(task, cost_usd=cost, baseline_usd=base, **columns)


def details(**extra) -> str:
    return json.dumps({"reasons": [], "task_needs": {"est_runtime_s": 60.0}, **extra})


def test_rows_no_dearer_than_their_baseline_need_no_reason():
    assert dearer_reasons(row(cost=0.3, base=1.0)) == ()
    assert dearer_reasons(row(cost=1.0, base=1.0, option="on-demand")) == ()


@pytest.mark.parametrize(
    ("columns", "reasons"),
    [
        ({"interruptions": 1, "state": "interrupted"}, (INTERRUPTED,)),
        ({"runtime_s": 90.0, "decision_json": details()}, (OVERRAN,)),
        ({"decision_json": details(fell_back_from="aws/r/g1/spot")}, (FELL_BACK,)),
        ({"decision_json": details(shared_by=4)}, (SHARED_IDLE,)),
        ({"decision_json": details(reasons=["packed: shares one aws g4 with 3"])}, (SHARED_IDLE,)),
        ({"option": "reserved", "decision_json": details()}, (RESERVATION,)),
        ({"decision_json": details(task_needs={"input_gib": 50.0})}, (EGRESS,)),
        ({"decision_json": details()}, (UNEXPLAINED,)),
        ({"decision_json": "not json"}, (UNEXPLAINED,)),
        (
            {"runtime_s": 120.0, "decision_json": details(shared_by=2, fell_back_from="x")},
            (OVERRAN, FELL_BACK, SHARED_IDLE),
        ),
    ],
)
def test_a_row_dearer_than_its_baseline_says_why(columns: dict, reasons: tuple) -> None:
    assert dearer_reasons(row(cost=1.2, base=1.0, **columns)) == reasons


def test_the_report_shows_why_rows_cost_more_in_every_format():
    rows = [
        row(cost=0.3, base=1.0),
        row(cost=0.2, base=0.0, interruptions=1, state="interrupted"),
        row(cost=1.3, base=1.0, decision_json=details(fell_back_from="aws/r/g1/spot")),
        row("combine", cost=0.1, base=0.1, option="on-demand"),
    ]
    report = build_report(rows, "task")
    embed = next(r for r in report.rows if r.group == "embed")
    assert embed.dearer_rows == 2 and embed.why == "1 interrupted, 1 fell back"
    combine = next(r for r in report.rows if r.group == "combine")
    assert combine.dearer_rows == 0 and combine.why == ""
    assert report.total.why == embed.why

    data = json.loads(render_json(report))
    assert data["rows"][1]["why"] == {INTERRUPTED: 1, FELL_BACK: 1}
    assert data["rows"][1]["dearer_rows"] == 2 and data["rows"][0]["why"] == {}
    lines = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert lines[1]["why"] == "1 interrupted, 1 fell back" and lines[0]["why"] == ""
    markdown = render_markdown(report)
    assert "why dearer" in markdown.splitlines()[0] and "1 fell back |" in markdown
    console = Console(width=160, record=True)
    console.print(render_rich(report))
    assert "1 interrupted, 1 fell back" in console.export_text()
