"""A hard cap covers what the report charges for an instance, not only its task rows.

The report adds each instance's boot, idle time and the cloud's one-minute minimum as a row
of its own (``core/instance_time.py``). Caps used to count task rows only, so seconds-long
tasks under a hard run cap produced a report whose spend crossed the cap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest

from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.adapters.provision.aws import AwsProvisioner
from prefect_cloudsched.core.accounting import MIN_BILLED_S, instance_billed_micro
from prefect_cloudsched.core.budget import BudgetExceeded, BudgetPolicy, BudgetTracker
from prefect_cloudsched.core.instance_time import overhead_records
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.core.records import to_micro
from prefect_cloudsched.runtime.session import Session
from prefect_cloudsched.testing.clouds import MockClouds
from prefect_cloudsched.testing.executor import InstanceStandInExecutor
from prefect_cloudsched.testing.provisioners import RecordingProvisioner
from prefect_cloudsched.testing.session import runtime_session

ONE_SECOND = TaskNeeds(cpus=2, memory_gib=4, est_runtime=timedelta(seconds=1), spot_ok=False)
US_EAST_1 = PolicyConfig(
    allowed_clouds=frozenset({"aws"}), allowed_regions=frozenset({"us-east-1"})
)


def _run(session: Session, name: str, seconds: float) -> str:
    """One attempt of a task that runs ``seconds``; its outcome."""
    spec = session.submit(name, ONE_SECOND, flow_run_id="run-1", flow_name="f", announce=True)
    try:
        placed = session.place(spec, task_run_id=name, attempt=1)
    except BudgetExceeded:
        return "refused"
    session.run(placed, lambda: time.sleep(seconds))
    session.finish(placed, None)
    return "completed"


def test_an_instance_minimum_above_the_cap_is_refused_before_any_launch(tmp_path) -> None:
    """The task row of a 1 s task is a fraction of a cent; its instance bills a minute."""
    provisioner = RecordingProvisioner()
    session = runtime_session(
        tmp_path,
        policy=US_EAST_1,
        provisioners={"aws": provisioner},
        executor=InstanceStandInExecutor(),
        budget=BudgetTracker(BudgetPolicy(per_run_usd=0.001)),
    )
    decision = session.decide(ONE_SECOND)
    minute = instance_billed_micro(
        to_micro(decision.offer.usd_per_hour), MIN_BILLED_S, decision.offer.option
    )
    assert to_micro(decision.expected_cost) * 2 < to_micro(0.001) < minute  # was admitted
    assert _run(session, "t", 0) == "refused"
    session.close()
    assert provisioner.started == [] and session.ledger.placements() == []


def _minute_micro(tmp_path) -> int:
    """What one minute of the instance these tests' tasks get is billed."""
    (tmp_path / "probe").mkdir()
    offer = runtime_session(tmp_path / "probe", policy=US_EAST_1).decide(ONE_SECOND).offer
    return instance_billed_micro(to_micro(offer.usd_per_hour), MIN_BILLED_S, offer.option)


def test_each_launch_counts_its_minimum_against_the_cap(tmp_path) -> None:
    provisioner, minute = RecordingProvisioner(), _minute_micro(tmp_path)
    budget = BudgetTracker(BudgetPolicy(per_run_usd=3.5 * minute / 1e6))
    session = runtime_session(
        tmp_path,
        policy=US_EAST_1,
        provisioners={"aws": provisioner},
        executor=InstanceStandInExecutor(),
        budget=budget,
    )
    outcomes = [_run(session, f"t{i}", 0) for i in range(8)]
    records = session.close()
    assert outcomes == ["completed"] * 3 + ["refused"] * 5  # rows alone would admit all 8
    assert budget.spent_micro == 3 * minute
    assert sum(r.cost_micro for r in records) < minute  # the rows say a fraction of it


@pytest.fixture(scope="module")
def clouds() -> Iterator[MockClouds]:
    with MockClouds(owner_id="cap-tests", heartbeat_seconds=0, record_instances=False) as mc:
        yield mc


@pytest.mark.parametrize("warm_seconds", [0.0, 2.0])
def test_the_report_of_a_capped_run_stays_under_its_hard_cap(
    clouds: MockClouds, tmp_path, warm_seconds: float
) -> None:
    """Real provisioner, instance rows in the ledger, the report's own overhead rows."""
    url = f"sqlite:///{tmp_path / 'cap.db'}"
    settings = replace(
        clouds.aws_settings,
        owner_id=f"cap-{int(warm_seconds)}",
        regions=("us-east-1",),
        ledger_url=url,
        record_instances=True,
        launch_timeout_seconds=30.0,
        warm_seconds=warm_seconds,
    )
    provisioner, cap_usd = AwsProvisioner(settings), 4.5 * _minute_micro(tmp_path) / 1e6
    session = runtime_session(
        tmp_path,
        ledger=Ledger(url),
        policy=US_EAST_1,
        provisioners={"aws": provisioner},
        executor=InstanceStandInExecutor(),
        budget=BudgetTracker(BudgetPolicy(per_run_usd=cap_usd)),
    )
    outcomes = [_run(session, f"t{i}", 0.05) for i in range(10)]
    records = session.close()
    provisioner.end_parked()
    rows = Ledger(url).placements()
    overhead = overhead_records(rows, Ledger(url).instances())
    spend = sum(r.cost_micro for r in rows) + sum(r.cost_micro for r in overhead)
    assert "completed" in outcomes and "refused" in outcomes
    assert overhead, "seconds-long tasks leave instance minutes no row paid"
    assert spend <= to_micro(cap_usd), f"report spend {spend} > cap {to_micro(cap_usd)}"
    assert len(records) == outcomes.count("completed")


def test_a_shared_day_cap_settles_at_the_instance_minute(tmp_path) -> None:
    """Other processes read the day's spend from the ledger's holds: it must include the
    instance's minimum too, or they admit what this run already spent."""
    from prefect_cloudsched.runtime.budget_watch import open_budget

    minute = _minute_micro(tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'day.db'}")
    session = runtime_session(
        tmp_path,
        ledger=ledger,
        policy=US_EAST_1,
        provisioners={"aws": RecordingProvisioner()},
        executor=InstanceStandInExecutor(),
        budget=open_budget(BudgetPolicy(per_day_usd=1.0), ledger),
    )
    assert _run(session, "t", 0) == "completed"
    [record] = session.close()
    [hold] = ledger.holds("run-1")
    assert hold["state"] == "settled" and hold["actual_micro"] == minute > record.cost_micro
    assert ledger.window_spend()["budget_per_day_usd"] == minute


class SlowBootProvisioner(RecordingProvisioner):
    """A provisioner whose instances may take up to ten minutes to run."""

    launch_timeout_seconds = 600.0


@pytest.mark.parametrize(("hard", "held_minutes"), [(True, 10), (False, 1)])
def test_a_hard_cap_holds_the_launch_timeout_a_soft_one_the_minimum(
    tmp_path, hard: bool, held_minutes: int
) -> None:
    """The boot cannot be stopped midway, so a hard cap holds its worst case; a soft cap
    only reports crossings and holds what the launch will at least cost."""
    minute = _minute_micro(tmp_path)
    budget = BudgetTracker(BudgetPolicy(per_run_usd=1.0, hard=hard))
    session = runtime_session(
        tmp_path,
        policy=US_EAST_1,
        provisioners={"aws": SlowBootProvisioner()},
        executor=InstanceStandInExecutor(),
        budget=budget,
    )
    spec = session.submit("t", ONE_SECOND, flow_run_id="run-1", flow_name="f", announce=True)
    placed = session.place(spec, task_run_id="t", attempt=1)
    assert abs(budget.in_flight_micro - held_minutes * minute) <= held_minutes
    session.finish(placed, None)
    session.close()
    assert budget.spent_micro == minute  # settled at what the instance cost


class SlowJoinExecutor(InstanceStandInExecutor):
    """A worker that takes a while to join, then fails to (its instance was released)."""

    def attach(self, handle, placement) -> None:
        time.sleep(0.6)
        raise RuntimeError("no worker joined")


def test_a_cap_reached_while_the_worker_joins_fails_the_task_with_budget_exceeded(
    tmp_path, monkeypatch
) -> None:
    """The instance counts from its launch request, so the watch may stop an attempt before
    its worker joins; the task then fails with the cap's error, not the failed join's."""
    import prefect_cloudsched.core.accounting as accounting

    monkeypatch.setattr(accounting, "MIN_BILLED_S", 0.1)  # a minimum the test can outrun
    needs = TaskNeeds(gpus=8, gpu_type="H100", est_runtime=timedelta(milliseconds=10))
    (tmp_path / "probe").mkdir()
    offer = runtime_session(tmp_path / "probe").decide(needs).offer
    cap_usd = offer.usd_per_hour * 0.3 / 3600  # 0.3 s of the instance
    budget = BudgetTracker(BudgetPolicy(per_run_usd=cap_usd))
    provisioner = RecordingProvisioner()
    session = runtime_session(
        tmp_path, provisioners={"aws": provisioner}, executor=SlowJoinExecutor(), budget=budget
    )
    spec = session.submit("t", needs, flow_run_id="run-1", flow_name="f", announce=True)
    with pytest.raises(BudgetExceeded):
        session.place(spec, task_run_id="t", attempt=1)
    session.close()
    assert provisioner.released == ["i-0"]
    assert 0 < budget.spent_micro <= to_micro(cap_usd)


def test_a_stopped_attempts_row_spans_what_it_was_billed(tmp_path) -> None:
    """Accounting mode has no instance to release: the body runs on after the stop, and the
    row used to end when it returned (10 s) while billing 3 s. Its span is its runtime now."""
    (tmp_path / "probe").mkdir()
    probe = runtime_session(tmp_path / "probe", policy=US_EAST_1)
    expected = probe.decide(ONE_SECOND).expected_cost
    session = runtime_session(
        tmp_path,
        policy=US_EAST_1,
        budget=BudgetTracker(BudgetPolicy(per_run_usd=2.5 * expected)),
    )
    spec = session.submit("long", ONE_SECOND, flow_run_id="run-1", flow_name="f", announce=True)
    placed = session.place(spec, task_run_id="long", attempt=1)
    session.run(placed, lambda: time.sleep(4.0))
    with pytest.raises(BudgetExceeded):
        session.finish(placed, None)
    (row,) = session.close()
    span = (row.ended_at - row.started_at).total_seconds()
    assert row.runtime_s < 3.5 and span == pytest.approx(row.runtime_s, abs=0.01)


def test_a_shared_day_cap_words_its_refusal_and_its_stop_like_the_run_cap(tmp_path) -> None:
    """The ledger's day/month holds know amounts only; the runner labels them (the message
    said "held for this task" with no expected cost, and "refused" for a stopped task)."""
    from prefect_cloudsched.runtime.budget_watch import open_budget

    ledger = Ledger(f"sqlite:///{tmp_path / 'day.db'}")
    budget = open_budget(BudgetPolicy(per_day_usd=1.0), ledger)
    hold, [refusal] = budget.admit(to_micro(0.6))  # held 2x = $1.20 > $1.00
    assert hold is None and refusal.cap == "budget_per_day_usd"
    assert refusal.expected_cost_micro == to_micro(0.6) and not refusal.running
    assert "$1.20 held for this task (2× its $0.60 expected cost" in refusal.describe()
    hold, _ = budget.admit(to_micro(0.3))
    [stop] = budget.extend(hold, to_micro(1.5))
    assert stop.running and "more for this task to keep running" in stop.describe()
    ledger.dispose()
