"""Fault suite: the scenarios of ``bench/fault_suite.py``, each run once against MockClouds.

The spot-recovery test is a plain harness test; the storms, capacity refusals, throttling and
the SIGKILL + ``reap`` scenario are marked ``slow``. The bench runs them N times and writes the
counts to ``bench/results/fault_suite.{json,md}``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.testing.clouds import MockClouds
from prefect_cloudsched.testing.executor import InstanceStandInExecutor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fault_suite


@pytest.fixture(scope="module")
def clouds() -> Iterator[MockClouds]:
    with MockClouds(owner_id="fault-tests", heartbeat_seconds=0.5) as mc:
        yield mc


@pytest.mark.harness
def test_spot_interruption_is_recovered_end_to_end(
    prefect_harness, clouds: MockClouds, tmp_path: Path
) -> None:
    outcome = fault_suite.storm(clouds, tmp_path, tasks=1, interrupt=1)
    assert outcome.ok, outcome
    assert outcome.faults_injected == 1 and outcome.interruptions == 1
    ledger = Ledger(fault_suite.os.environ["PREFECT_CLOUDSCHED_LEDGER_URL"])
    rows = ledger.placements()
    assert [r.state for r in rows] == ["interrupted", "completed"]
    assert rows[0].option == "spot" and rows[0].wasted_micro == rows[0].cost_micro > 0
    assert rows[0].instance_id in clouds.interrupted
    assert rows[1].instance_id != rows[0].instance_id  # re-placed on a new instance
    [interruption] = ledger.interruptions()
    assert interruption["instance_id"] == rows[0].instance_id
    assert interruption["wasted_micro"] == rows[0].wasted_micro


@pytest.mark.slow
@pytest.mark.harness
def test_interruption_storm(prefect_harness, clouds: MockClouds, tmp_path: Path) -> None:
    outcome = fault_suite.storm(clouds, tmp_path, tasks=4)
    assert outcome.ok, outcome
    assert outcome.faults_injected >= 4 and outcome.interruptions == outcome.faults_injected
    assert "spot" not in outcome.detail  # every task finished on non-spot capacity


@pytest.mark.slow
@pytest.mark.harness
def test_capacity_refusals_fall_back(prefect_harness, clouds: MockClouds, tmp_path: Path) -> None:
    outcome = fault_suite.capacity(clouds, tmp_path)
    assert outcome.ok, outcome
    assert outcome.faults_injected >= 2  # both first choices were tried and refused


@pytest.mark.slow
@pytest.mark.harness
def test_throttled_launches_start_no_duplicates(
    prefect_harness, clouds: MockClouds, tmp_path: Path
) -> None:
    outcome = fault_suite.throttle(clouds, tmp_path)
    assert outcome.ok, outcome
    assert outcome.faults_injected > 0
    assert outcome.detail.startswith(f"instances launched {outcome.tasks} ")


@pytest.mark.slow
@pytest.mark.harness
def test_sigkilled_flow_is_reaped(prefect_harness, clouds: MockClouds, tmp_path: Path) -> None:
    outcome = fault_suite.sigkill(clouds, tmp_path)
    assert outcome.ok, outcome
    assert outcome.detail.startswith("2 orphaned by the kill, 2 reaped")


@pytest.mark.harness
def test_checkpointable_task_resumes_after_interruption(
    prefect_harness, clouds: MockClouds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from prefect import flow, task

    from prefect_cloudsched import CloudSchedTaskRunner, checkpoint, requires

    monkeypatch.setenv(checkpoint.DIR_ENV, str(tmp_path / "ckpt"))
    monkeypatch.setenv("PREFECT_CLOUDSCHED_LEDGER_URL", f"sqlite:///{tmp_path / 'l.db'}")
    ran: list[int] = []

    @requires(gpus=1, est_runtime=timedelta(minutes=20), spot_ok=True, checkpointable=True)
    @task
    def train(epochs: int) -> int:
        state = checkpoint.load(default={"epoch": 0})
        for epoch in range(state["epoch"], epochs):
            ran.append(epoch)
            state = {"epoch": epoch + 1}
            checkpoint.save(state)
        return state["epoch"]

    clouds.interrupt_next_spot(count=1)
    runner = CloudSchedTaskRunner(
        provisioners=clouds.provisioners_for("ckpt-tests"),
        executor=InstanceStandInExecutor(),
        label_task_runs=False,
    )

    @flow(task_runner=runner)
    def f() -> int:
        return train.submit(5).result()

    try:
        assert f() == 5
    finally:
        clouds.disarm()
    states = [r.state for r in Ledger(f"sqlite:///{tmp_path / 'l.db'}").placements()]
    assert states == ["interrupted", "completed"]
    assert ran == [0, 1, 2, 3, 4]  # the retry resumed from the checkpoint: no epoch twice
    with pytest.raises(RuntimeError, match="no Prefect task run"):
        checkpoint.load()
    assert checkpoint.load(default="none", key="other") == "none"
    checkpoint.save({"x": 1}, key="other")
    assert checkpoint.load(key="other") == {"x": 1}
    checkpoint.clear(key="other")
    assert checkpoint.load(key="other") is None
