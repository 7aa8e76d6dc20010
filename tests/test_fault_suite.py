"""Fault suite: the scenarios of ``bench/fault_suite.py`` and ``bench/fault_money.py``, each
run once (SQLite unless the scenario is about PostgreSQL).

The spot-recovery test is a plain harness test; the storms, capacity refusals, throttling,
SIGKILL + ``reap``, ledger-lock and PostgreSQL-restart scenarios are marked ``slow``. The two
runtime scenarios (overrun vs a hard run cap; four processes sharing one hard day cap through
the ledger's budget holds) must measure their figures and stay at or under the cap. The five
remote bad-input scenarios (issue 13: a worker that never joins, other worker versions, an
unreachable scheduler, an AMI or an image parameter the region lacks) are harness tests of a
few seconds each. The bench runs everything N times on both backends and writes
``bench/results/fault_suite.{json,md}``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.testing.clouds import MockClouds
from prefect_cloudsched.testing.executor import InstanceStandInExecutor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fault_money
import fault_remote
import fault_suite
from fault_outcome import Outcome


def _assert_ok(outcome: Outcome) -> None:
    # as a str: pytest prints a message object cut at 240 characters, hiding which check failed
    assert outcome.ok, str(outcome.as_dict())


@pytest.fixture(scope="module")
def clouds() -> Iterator[MockClouds]:
    with MockClouds(owner_id="fault-tests", heartbeat_seconds=0.5) as mc:
        yield mc


@pytest.fixture
def sqlite_ok(prefect_harness, clouds: MockClouds, tmp_path: Path) -> Callable[..., Outcome]:
    """Runs a mock-cloud scenario once on SQLite and checks it passed; returns its outcome."""

    def run(scenario: Callable[..., Outcome], **options: object) -> Outcome:
        outcome = scenario(clouds, tmp_path, "sqlite", **options)
        _assert_ok(outcome)
        return outcome

    return run


@pytest.mark.harness
def test_spot_interruption_is_recovered_end_to_end(
    sqlite_ok: Callable[..., Outcome], clouds: MockClouds
) -> None:
    outcome = sqlite_ok(fault_suite.storm, tasks=1, interrupt=1)
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
def test_interruption_storm(sqlite_ok: Callable[..., Outcome]) -> None:
    outcome = sqlite_ok(fault_suite.storm, tasks=4)
    assert outcome.faults_injected >= 4 and outcome.interruptions == outcome.faults_injected
    assert "spot" not in outcome.detail  # every task finished on non-spot capacity


@pytest.mark.slow
@pytest.mark.harness
def test_capacity_refusals_fall_back(sqlite_ok: Callable[..., Outcome]) -> None:
    outcome = sqlite_ok(fault_suite.capacity)
    assert outcome.faults_injected >= 2  # both first choices were tried and refused


@pytest.mark.slow
@pytest.mark.harness
def test_throttled_launches_start_no_duplicates(sqlite_ok: Callable[..., Outcome]) -> None:
    outcome = sqlite_ok(fault_suite.throttle)
    assert outcome.faults_injected == 2 * outcome.tasks  # throttled launches, not token hits
    assert outcome.detail.startswith(f"instances launched {outcome.tasks} ")


@pytest.mark.slow
@pytest.mark.harness
def test_sigkilled_flow_is_reaped(sqlite_ok: Callable[..., Outcome]) -> None:
    outcome = sqlite_ok(fault_suite.sigkill)
    assert outcome.tasks_ok == outcome.tasks == 5  # counted from the killed process's output
    assert outcome.rows_expected == 5 + 2 == outcome.rows_found  # 5 task rows + 2 orphan rows
    assert "2 orphaned by the kill, 2 reaped, 2 orphan row(s)" in outcome.detail


@pytest.mark.slow
@pytest.mark.harness
def test_instance_minutes_count_against_a_hard_cap(sqlite_ok: Callable[..., Outcome]) -> None:
    outcome = sqlite_ok(fault_money.instance_cap)
    assert outcome.spend_over_cap is not None and 0 < outcome.spend_over_cap <= 1.0
    assert "refused by the cap" in outcome.detail and not outcome.detail.startswith("0 completed")
    assert "0 refused" not in outcome.detail  # task rows alone would have admitted all six


def test_a_scenario_that_raises_is_recorded_as_no_and_the_suite_goes_on() -> None:
    def broken(tmp: Path, backend: str) -> fault_suite.Outcome:
        raise RuntimeError("the mock cloud fell over\nsecond line")

    def fine(tmp: Path, backend: str) -> fault_suite.Outcome:
        return fault_suite.Outcome("fine", backend, 2, 2, 1, 0, 0, 2, 2, True, 0.1)

    outcomes = [
        fault_suite.run_one(broken, "broken", "sqlite", Path("/tmp")),
        fault_suite.run_one(fine, "fine", "sqlite", Path("/tmp")),
    ]
    assert [o.ok for o in outcomes] == [False, True]
    assert outcomes[0].error == "RuntimeError: the mock cloud fell over"
    summary = fault_suite.summarise(outcomes)
    table = fault_suite.render(summary, outcomes)
    assert "| broken | sqlite | 1 | 0/1 |" in table and table.count("| NO |") == 1
    assert "| YES |" in table and "the mock cloud fell over" in table
    over = fault_suite.Outcome("x", "sqlite", 1, 1, 0, 0, 0, 1, 1, None, 0.1, spend_over_cap=1.01)
    assert not over.ok  # a cap crossed by 1% is a NO
    assert not fault_suite.Outcome("x", "sqlite", 1, 1, 0, 0, 0, 1, 1, False, 0.1).ok
    vague = fault_suite.Outcome(
        "x", "sqlite", 1, 1, 1, 0, 0, 0, 0, None, 0.1, one_line_error=True, names_setting=False
    )
    assert not vague.ok  # a failure that does not name the setting to fix is a NO
    assert "| 0/1 |" in fault_suite.render(fault_suite.summarise([vague]), [vague])


def test_only_remote_selects_the_remote_family() -> None:
    names = [n for n in fault_suite.scenarios() if fault_suite.selected(n, {"remote"})]
    assert names == list(fault_remote.REMOTE_SCENARIOS) and len(names) == 5
    assert fault_suite.selected("storm", set()) and not fault_suite.selected("storm", {"remote"})


@pytest.mark.slow
@pytest.mark.harness
def test_a_held_sqlite_write_lock_loses_no_row(prefect_harness, tmp_path: Path) -> None:
    # the bench holds it for the full 25 s; 12 s still outlasts the runner's close wait
    outcome = fault_money.ledger_lock(tmp_path, "sqlite", tasks=20, lock_s=12.0)
    _assert_ok(outcome)
    assert outcome.rows_found == outcome.rows_expected == 20


@pytest.mark.slow
@pytest.mark.harness
def test_a_postgres_restart_mid_flow_loses_no_row(
    prefect_harness, postgres_url: str, tmp_path: Path
) -> None:
    outcome = fault_money.postgres_restart(tmp_path, "postgresql", tasks=24)
    assert outcome.faults_injected == 1, outcome  # the server really restarted mid-flow
    _assert_ok(outcome)


@pytest.mark.slow
@pytest.mark.harness
def test_runtime_overrun_hook_stays_under_the_hard_cap(prefect_harness, tmp_path: Path) -> None:
    outcome = fault_money.runtime_overrun(tmp_path, "sqlite")
    assert outcome.spend_over_cap is not None and outcome.spend_over_cap > 0  # measured
    assert outcome.rows_lost == 0
    _assert_ok(outcome)


@pytest.mark.slow
@pytest.mark.harness
def test_shared_day_cap_hook_keeps_four_processes_under_one_cap(
    prefect_harness, tmp_path: Path
) -> None:
    outcome = fault_money.shared_day_cap(tmp_path, "sqlite")
    assert outcome.spend_over_cap is not None and outcome.spend_over_cap > 0  # measured
    _assert_ok(outcome)


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


# ---------------------------------------------------------------------- remote bad input
@pytest.mark.harness
@pytest.mark.parametrize(
    ("scenario", "final_state", "rows_expected", "in_detail", "within_s"),
    [
        # one instance started, billed and released; the 2 s join timeout, not the 600 s default
        pytest.param(fault_remote.never_joins, "FAILED", 1, "", 60, id="worker_never_joins"),
        pytest.param(
            fault_remote.version_mismatch,
            "FAILED",
            1,
            "cloudpickle 0.0.1 (flow: ",
            None,
            id="worker_with_other_versions",
        ),
        # the session never opened: no instance was started for it
        pytest.param(
            fault_remote.no_scheduler, "NOT_SUBMITTED", 0, "", None, id="unreachable_scheduler"
        ),
        # moto's own AMI check refused it
        pytest.param(
            fault_remote.bad_image, "FAILED", 0, "InvalidAMIID.NotFound", None, id="missing_ami"
        ),
        # moto's SSM had no such parameter
        pytest.param(
            fault_remote.no_image_parameter,
            "FAILED",
            0,
            "ParameterNotFound",
            None,
            id="missing_image_parameter",
        ),
    ],
)
def test_remote_bad_input_fails_with_one_line_and_leaves_nothing_running(
    sqlite_ok: Callable[..., Outcome],
    scenario: Callable[..., fault_suite.Outcome],
    final_state: str,
    rows_expected: int,
    in_detail: str,
    within_s: float | None,
) -> None:
    """Failed with one line naming the setting; nothing of ours left; launches accounted."""
    outcome = sqlite_ok(scenario)
    assert outcome.one_line_error and outcome.names_setting, outcome.detail
    assert outcome.instances_leaked == 0 and outcome.rows_lost == 0
    assert outcome.faults_injected >= 1  # the fault really happened
    assert outcome.final_state == final_state and outcome.rows_expected == rows_expected
    assert in_detail in outcome.detail
    assert within_s is None or outcome.seconds < within_s
