"""The runtime session without Prefect: place → run → finish, caps, faults, "never both"."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest

from prefect_cloudsched.adapters.execute.base import LocalExecutor
from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.core.budget import BudgetExceeded, BudgetPolicy, BudgetTracker
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import PlacementState
from prefect_cloudsched.core.policy.admission import needs_for_attempt
from prefect_cloudsched.errors import DeadlineAtRisk, InputError, SpotInterrupted
from prefect_cloudsched.runtime import build
from prefect_cloudsched.runtime.attempt import run_and_finish
from prefect_cloudsched.runtime.config import RunnerConfig
from prefect_cloudsched.runtime.session import Session
from prefect_cloudsched.testing.executor import InstanceStandInExecutor
from prefect_cloudsched.testing.provisioners import RecordingProvisioner
from prefect_cloudsched.testing.session import runtime_session


def _attempt(session: Session, needs: TaskNeeds, body, *, attempt: int = 1):
    spec = session.submit("t", needs, flow_run_id="run-1", flow_name="f", announce=True)
    placed = session.place(spec, task_run_id="tr-1", attempt=attempt)
    return run_and_finish(session, placed, body)


def test_place_run_finish_writes_one_row_and_releases_the_instance(tmp_path) -> None:
    provisioner = RecordingProvisioner()
    session = runtime_session(
        tmp_path, provisioners={"aws": provisioner}, executor=InstanceStandInExecutor()
    )
    assert _attempt(session, TaskNeeds(gpus=1, gpu_type="A10G"), lambda: 42) == 42
    [record] = session.close()
    assert record.state == "completed" and record.instance_id == "i-0"
    assert provisioner.released == ["i-0"]
    assert [r.task_run_id for r in session.ledger.placements()] == ["tr-1"]


def test_a_failing_interruption_write_never_hides_the_spot_loss(tmp_path) -> None:
    """The interruption row used to be written inline; its error replaced SpotInterrupted."""

    class BrokenInterruptions(Ledger):
        def record_interruption(self, **_: object) -> None:
            raise RuntimeError("database is locked")

    provisioner = RecordingProvisioner(reclaim_spot=True)
    session = runtime_session(
        tmp_path,
        ledger=BrokenInterruptions(f"sqlite:///{tmp_path / 'b.db'}"),
        provisioners={"aws": provisioner},
        executor=InstanceStandInExecutor(),
    )
    needs = TaskNeeds(gpus=1, gpu_type="A10G", spot_ok=True, deadline=timedelta(hours=6))
    with pytest.raises(SpotInterrupted):
        _attempt(session, needs, lambda: "lost")
    [record] = session.close()
    assert record.state == "interrupted" and record.wasted_micro == record.cost_micro
    assert provisioner.released == ["i-0"]


def _eight_overrunning_tasks(tmp_path, policy: BudgetPolicy) -> tuple[list[str], list]:
    """Eight 8xH100 tasks estimated at 1 s that run 3 s, at once, under ``policy``."""
    session = runtime_session(tmp_path, budget=BudgetTracker(policy), spot_retries=0)
    needs = TaskNeeds(gpus=8, gpu_type="H100", est_runtime=timedelta(seconds=1))
    outcomes: list[str] = []

    def one() -> None:
        try:
            _attempt(session, needs, lambda: time.sleep(3))
            outcomes.append("completed")
        except BudgetExceeded:
            outcomes.append("refused or stopped")

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, session.close()


def test_hard_run_cap_stops_overrunning_tasks_before_it_is_crossed(tmp_path) -> None:
    """Holding only the estimate (overrun_factor 1), three start; the watch stops them."""
    policy = BudgetPolicy(overrun_factor=1.0, per_run_usd=0.05, hard=True)
    outcomes, records = _eight_overrunning_tasks(tmp_path, policy)
    spent = sum(r.cost_micro for r in records)
    assert spent <= 50_000, f"spent {spent} > cap 50000"
    assert "refused or stopped" in outcomes and len(outcomes) == 8
    stopped = [r for r in records if "stopped" in json.loads(r.decision_json)]
    assert stopped and all(r.runtime_s < 3 for r in stopped)


def test_a_hard_cap_admits_the_worst_case_so_no_work_is_thrown_away(tmp_path) -> None:
    """The default holds twice the estimate: one task is admitted and finishes its 3 s under
    the cap, instead of three starting and all being stopped with their work lost."""
    outcomes, records = _eight_overrunning_tasks(tmp_path, BudgetPolicy(per_run_usd=0.05))
    assert sum(r.cost_micro for r in records) <= 50_000
    assert outcomes.count("completed") >= 1
    assert not [r for r in records if "stopped" in json.loads(r.decision_json)]


def test_two_sessions_on_one_ledger_share_a_hard_day_cap(tmp_path) -> None:
    """Observation 3: each process read the day's spend once, at start (2.76x the cap)."""
    from prefect_cloudsched.runtime.budget_watch import SharedWindowBudget, open_budget

    ledger = Ledger(f"sqlite:///{tmp_path / 'day.db'}")
    policy = BudgetPolicy(overrun_factor=1.0, per_day_usd=0.05, hard=True)
    needs = TaskNeeds(gpus=8, gpu_type="H100", est_runtime=timedelta(seconds=3))
    first, second = (
        runtime_session(tmp_path, ledger=ledger, budget=open_budget(policy, ledger), spot_retries=0)
        for _ in range(2)
    )
    assert isinstance(first.budget, SharedWindowBudget)
    spec = first.submit("a", needs, flow_run_id="run-a", flow_name="f", announce=True)
    held = first.place(spec, task_run_id="tr-a", attempt=1)  # holds its cost in the ledger
    [hold] = ledger.holds("run-a")
    assert hold["state"] == "held" and hold["amount_micro"] > 0
    other = second.submit("b", needs, flow_run_id="run-b", flow_name="f", announce=True)
    with pytest.raises(BudgetExceeded):  # the other process sees the first one's hold
        second.place(other, task_run_id="tr-b", attempt=1)
    first.finish(held, None)
    [record] = first.close()
    assert record.budget_hold_id == hold["id"]
    assert ledger.holds("run-a")[0]["state"] == "settled"
    assert ledger.window_spend()["budget_per_day_usd"] == record.cost_micro
    second.close()


def test_deadline_at_risk_warns_or_fails_before_start(tmp_path) -> None:
    needs = TaskNeeds(cpus=2, est_runtime=timedelta(hours=5), deadline=timedelta(hours=1))
    warn = runtime_session(tmp_path)
    assert _attempt(warn, needs, lambda: "late") == "late"
    [record] = warn.close()
    assert json.loads(record.decision_json)["deadline_at_risk"] is True

    fail = runtime_session(tmp_path, on_deadline_risk="fail")
    with pytest.raises(DeadlineAtRisk, match="deadline at risk"):
        _attempt(fail, needs, lambda: "never")
    assert fail.close() == []


def test_no_spot_once_the_spot_retries_are_used() -> None:
    needs = TaskNeeds(gpus=1, spot_ok=True)
    assert needs_for_attempt(needs, 1, 2).spot_ok
    assert needs_for_attempt(needs, 2, 2).spot_ok
    assert not needs_for_attempt(needs, 3, 2).spot_ok


def test_never_both_refuses_local_bodies_next_to_provisioners() -> None:
    provisioners = {"aws": RecordingProvisioner()}
    with pytest.raises(InputError, match="runs task bodies in this process"):
        build.make_executor("local", {}, provisioners=provisioners)
    with pytest.raises(InputError, match="runs task bodies in this process"):
        build.make_executor(LocalExecutor(), {}, provisioners=provisioners)
    default = build.make_executor(None, {}, provisioners=provisioners)
    assert default.runs_on_instance and default.name == "dask"
    assert build.make_executor(None, {}, provisioners={}).name == "local"
    # accounting only: provisioners are dropped, bodies run here
    assert not build.make_executor(
        "local", {}, provisioners={}, execution="accounting"
    ).runs_on_instance
    with pytest.raises(InputError, match="execution"):
        RunnerConfig(execution="sometimes")  # type: ignore[arg-type]


def test_a_draft_plan_is_never_treated_as_owned_reservations(tmp_path) -> None:
    """Observation 1: a saved draft made every 1xA100 task "reserved" at $0."""
    from prefect_cloudsched.runtime.observer import LoggingObserver

    ledger = Ledger(f"sqlite:///{tmp_path / 'p.db'}")
    key = "aws/us-east-1/p4d.24xlarge"
    plan = {"reserved": [{"capacity_key": key, "count": 1}]}
    plan_id = ledger.record_plan(
        name="draft", status="optimal", expected_micro=1, ondemand_micro=2, plan=plan
    )

    def held():
        return build.reserved_capacity({}, {}, ledger, use_plan=True, observer=LoggingObserver())

    assert held().counts == {}
    ledger.mark_plan_bought(plan_id)
    assert held().counts == {key: 1}
    session = runtime_session(
        tmp_path, ledger=ledger, reserved=held(), state=PlacementState(reserved_free={key: 1})
    )
    _attempt(session, TaskNeeds(gpus=8, gpu_type="A100"), lambda: None)
    [record] = session.close()
    assert record.option == "reserved" and record.reservation_source == "plan"
    [row] = ledger.placements()
    assert row.reservation_source == "plan"
