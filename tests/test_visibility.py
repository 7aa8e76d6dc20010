"""Cost artifacts, ``cloudsched.*`` events and budget enforcement, pure and under the harness."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

from prefect_cloudsched import CloudSchedTaskRunner, Ledger, requires
from prefect_cloudsched.core.catalog import load_catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import decide
from prefect_cloudsched.core.records import PlacementRecord, to_micro
from prefect_cloudsched.errors import SpotInterrupted
from prefect_cloudsched.prefect.blocks import CloudSchedLedger, CloudSchedPolicy
from prefect_cloudsched.prefect.visibility import (
    EVENT_BUDGET,
    EVENT_DECIDED,
    artifact_keys,
    cost_summary,
    cost_table,
    is_run_id,
    slugify,
)
from prefect_cloudsched.testing.provisioners import RecordingProvisioner
from prefect_cloudsched.testing.records import placement_record

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _record(task_name: str, cost: float, baseline: float, **kw: Any) -> PlacementRecord:
    columns = {"started_at": T0, "zone": "us-east-1a", **kw}
    return placement_record(task_name, cost_usd=cost, baseline_usd=baseline, **columns)


# --------------------------------------------------------------------------- pure
@pytest.mark.parametrize(
    ("name", "slug"),
    [("ML Pipeline", "ml-pipeline"), ("train_model__v2", "train-model-v2"), ("!!!", "flow")],
)
def test_slugify_gives_valid_artifact_keys(name: str, slug: str) -> None:
    assert slugify(name) == slug
    assert artifact_keys(name) == (f"cloudsched-cost-{slug}", f"cloudsched-cost-summary-{slug}")


def test_cost_table_has_one_row_per_placement_in_start_order() -> None:
    late = _record("b", 0.2, 0.5, started_at=T0 + timedelta(minutes=5), interruptions=1)
    rows = cost_table([late, _record("a", 0.1, 0.4)])
    assert [r["task"] for r in rows] == ["a", "b"]
    assert rows[0]["saving_usd"] == pytest.approx(0.3)
    assert rows[0]["gpus"] == "1xA10G" and rows[0]["region"] == "us-east-1a"
    assert rows[1]["interrupted"] is True


def test_cost_summary_totals_and_refusals() -> None:
    text = cost_summary(
        [_record("a", 0.1, 0.4), _record("b", 0.2, 0.2)], "demo", refusals=["c: refused"]
    )
    assert "$0.300000" in text and "$0.600000" in text and "50.0%" in text
    assert "## Refused by the budget" in text and "- c: refused" in text


def test_is_run_id() -> None:
    assert is_run_id("0192f3a4-5b6c-7d8e-9f01-23456789abcd")
    assert not is_run_id("no-flow-run") and not is_run_id(None)


# --------------------------------------------------------------------------- harness helpers
def _read_events(names: list[str], flow_run_id: str, expect: Callable[[list], bool]) -> list:
    """Poll the events API (the persister writes in batches) until ``expect`` holds.

    ``names`` are name prefixes; only events related to the flow run are returned.
    """
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 30
    found: list = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            response = client._client.post(
                "/events/filter",
                json={
                    "filter": {
                        "event": {"prefix": names},
                        "related": {"id": [f"prefect.flow-run.{flow_run_id}"]},
                    },
                    "limit": 50,
                },
            )
            response.raise_for_status()
            found = [
                event
                for event in response.json()["events"]
                if any(
                    r["prefect.resource.id"] == f"prefect.flow-run.{flow_run_id}"
                    for r in event["related"]
                )
            ]
            if expect(found):
                return found
            time.sleep(0.5)
    return found


def _artifacts(flow_run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


@requires(cpus=1)  # declared needs: its decisions are announced (events, log lines, tag)
@task
def add(x: int) -> int:
    return x + 1


@requires(cpus=1)
@task
def slow_add(x: int) -> int:
    time.sleep(1.0)  # keeps its budget hold while the other task is admitted
    return x + 1


def _outcomes(futures: Any) -> list[tuple[str, str]]:
    """(state type, result or ``ExceptionName: message``) of each future, never raising."""
    outcomes = []
    for future in futures:
        future.wait()
        value = future.state.result(raise_on_failure=False)
        text = f"{type(value).__name__}: {value}" if isinstance(value, Exception) else str(value)
        outcomes.append((future.state.type.value, text))
    return outcomes


def _cheapest_cpu_cost() -> float:
    return decide(TaskNeeds(), load_catalog()).expected_cost


# --------------------------------------------------------------------------- harness
@pytest.mark.harness
def test_flow_publishes_cost_artifacts_and_decision_events(prefect_harness, ledger_url) -> None:
    @task
    def undeclared(x: int) -> int:
        return x

    @flow(name="Visibility Demo", task_runner=CloudSchedTaskRunner(max_workers=2))
    def demo() -> list[int]:
        undeclared.submit(0).result()  # runs as before: a ledger row, no event
        return [f.result() for f in add.map([1, 2, 3])]

    state = demo(return_state=True)
    assert state.result() == [2, 3, 4]
    run_id = str(state.state_details.flow_run_id)
    artifacts = _artifacts(run_id)
    table, summary = (
        artifacts["cloudsched-cost-visibility-demo"],
        artifacts["cloudsched-cost-summary-visibility-demo"],
    )
    assert table.type == "table" and summary.type == "markdown"
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert sorted(r["task"] for r in rows) == ["add", "add", "add", "undeclared"]
    ledger_cost = sum(r.cost_micro for r in Ledger(ledger_url).placements(flow_run_id=run_id))
    assert sum(to_micro(r["cost_usd"]) for r in rows) == pytest.approx(ledger_cost, abs=3)
    assert "Cost of `Visibility Demo`" in summary.data and "saved" in summary.data

    events = _read_events([EVENT_DECIDED], run_id, lambda found: len(found) >= 3)
    assert len(events) == 3 and {e["payload"]["task"] for e in events} == {"add"}
    event = events[0]
    roles = {r["prefect.resource.role"] for r in event["related"]}
    assert {"flow-run", "task-run"} <= roles
    assert event["resource"]["prefect.resource.id"].startswith("cloudsched.offer.aws/") or event[
        "resource"
    ]["prefect.resource.id"].startswith("cloudsched.offer.gcp/")
    assert event["payload"]["task"] == "add" and event["payload"]["baseline_cost"] > 0


@pytest.mark.harness
def test_hard_cap_fails_the_task_with_budget_exceeded(prefect_harness, ledger_url) -> None:
    cap = _cheapest_cpu_cost() * 2.5  # room for one worst case (2x) in flight, not two
    policy = CloudSchedPolicy(budget_per_run_usd=cap)

    @flow(name="hard-cap", task_runner=CloudSchedTaskRunner(max_workers=2, policy=policy))
    def capped() -> list[tuple[str, str]]:
        futures = slow_add.map([1, 2])
        return _outcomes(futures)

    state = capped(return_state=True)
    outcomes = sorted(state.result())
    assert [kind for kind, _ in outcomes] == ["COMPLETED", "FAILED"]
    error = outcomes[1][1]
    assert error.startswith("BudgetExceeded: slow_add: refused, budget_per_run_usd $0.00")
    assert "\n" not in error and "expected" in error
    run_id = str(state.state_details.flow_run_id)
    assert len(Ledger(ledger_url).placements(flow_run_id=run_id)) == 1  # nothing ran over
    events = _read_events([EVENT_BUDGET], run_id, lambda found: len(found) >= 1)
    assert events and events[0]["payload"]["refused"] is True
    assert events[0]["payload"]["cap"] == "budget_per_run_usd"
    assert "Refused by the budget" in _artifacts(run_id)["cloudsched-cost-summary-hard-cap"].data


@pytest.mark.harness
def test_soft_cap_runs_and_reports_once(prefect_harness, ledger_url) -> None:
    policy = CloudSchedPolicy(
        budget_per_run_usd=_cheapest_cpu_cost() * 0.5, budget_enforcement="soft"
    )

    @flow(name="soft-cap", task_runner=CloudSchedTaskRunner(max_workers=1, policy=policy))
    def soft() -> list[int]:
        return [f.result() for f in add.map([1, 2, 3])]

    state = soft(return_state=True)
    assert state.result() == [2, 3, 4]
    run_id = str(state.state_details.flow_run_id)
    events = _read_events([EVENT_BUDGET], run_id, lambda found: len(found) >= 1)
    time.sleep(1.0)
    events = _read_events([EVENT_BUDGET], run_id, lambda found: len(found) >= 1)
    assert len(events) == 1 and events[0]["payload"]["refused"] is False


@pytest.mark.harness
def test_day_cap_counts_earlier_runs_in_the_ledger(prefect_harness, ledger_url) -> None:
    @flow(name="day-1", task_runner=CloudSchedTaskRunner())
    def first() -> int:
        return slow_add.submit(1).result()

    first()
    spent = sum(r.cost_micro for r in Ledger(ledger_url).placements())
    assert spent > 0
    policy = CloudSchedPolicy(budget_per_day_usd=spent / 1e6 * 1.01)  # no room for another

    @flow(name="day-2", task_runner=CloudSchedTaskRunner(policy=policy))
    def second() -> list[tuple[str, str]]:
        return _outcomes([add.submit(2)])

    [(kind, error)] = second()
    assert kind == "FAILED" and "budget_per_day_usd" in error


@pytest.mark.harness
def test_cheapest_fallback_accepts_deadline_risk_within_the_cap(
    prefect_harness, ledger_url
) -> None:
    needs = TaskNeeds(gpus=1, gpu_type="A10G", spot_ok=True, est_runtime=timedelta(hours=1))
    catalog = load_catalog()
    on_demand = decide(needs.merged({"deadline": timedelta(hours=1, minutes=5)}), catalog)
    spot = decide(needs, catalog)
    assert on_demand.offer.option.value == "on-demand" and spot.offer.option.value == "spot"
    cap = (on_demand.expected_cost + spot.expected_cost) / 2

    @requires(
        gpus=1,
        gpu_type="A10G",
        spot_ok=True,
        est_runtime=timedelta(hours=1),
        deadline=timedelta(hours=1, minutes=5),
    )
    @task
    def train() -> str:
        return "ok"

    def run(on_budget: str) -> Any:
        policy = CloudSchedPolicy(budget_per_run_usd=cap, on_budget=on_budget)

        @flow(name=f"fallback-{on_budget}", task_runner=CloudSchedTaskRunner(policy=policy))
        def f() -> list[tuple[str, str]]:
            return _outcomes([train.submit()])

        return f()[0][0]

    assert run("fail") == "FAILED"
    assert run("cheapest") == "COMPLETED"
    rows = Ledger(ledger_url).placements(flow_name="fallback-cheapest")
    assert [r.option for r in rows] == ["spot"]
    assert "cheapest fallback" in rows[0].explanation


@pytest.mark.harness
def test_spot_share_and_default_deadline_from_the_policy(prefect_harness, ledger_url) -> None:
    @requires(spot_ok=True, est_runtime=timedelta(hours=1))
    @task
    def batch(i: int) -> int:
        return i

    policy = CloudSchedPolicy(spot_max_share=0.5)

    @flow(name="spot-share", task_runner=CloudSchedTaskRunner(max_workers=1, policy=policy))
    def share() -> list[int]:
        return [f.result() for f in batch.map(range(4))]

    share()
    options = [r.option for r in Ledger(ledger_url).placements(flow_name="spot-share")]
    assert options.count("spot") == 2 and len(options) == 4

    # a default deadline of runtime + 30 min leaves too little slack for spot
    strict = CloudSchedPolicy(default_deadline_slack_hours=0.5)

    @flow(name="default-deadline", task_runner=CloudSchedTaskRunner(policy=strict))
    def deadline() -> int:
        return batch.submit(1).result()

    deadline()
    rows = Ledger(ledger_url).placements(flow_name="default-deadline")
    assert [r.option for r in rows] == ["on-demand"]
    assert "spot excluded" in rows[0].explanation


@pytest.mark.harness
def test_secrets_never_reach_logs_artifacts_events_or_ledger(
    prefect_harness, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    planted = "PLANTEDsecret9731"
    db = tmp_path / "secret-ledger.db"
    ledger_block = CloudSchedLedger(url=f"sqlite:///file:{db}?uri=true&token={planted}")
    ledger_block.save("secret-ledger", overwrite=True)
    policy = CloudSchedPolicy(budget_per_run_usd=_cheapest_cpu_cost() * 2.5)  # one worst case

    @flow(
        name="secret-flow",
        log_prints=True,
        task_runner=CloudSchedTaskRunner(policy=policy, ledger="secret-ledger"),
    )
    def secret_flow() -> list[tuple[str, str]]:
        return _outcomes(slow_add.map([1, 2]))

    state = secret_flow(return_state=True)
    run_id = str(state.state_details.flow_run_id)
    assert sorted(kind for kind, _ in state.result()) == ["COMPLETED", "FAILED"]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 30  # run logs reach the API in batches
    logs: list[Any] = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not any("refused" in log.message for log in logs):
            time.sleep(0.5)
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert any("chose" in log.message for log in logs)
    texts = [log.message for log in logs]
    texts += [str(a.data) for a in _artifacts(run_id).values()]
    texts += [str(e) for e in _read_events(["cloudsched."], run_id, lambda f: len(f) >= 2)]
    texts.append(capfd.readouterr().out + capfd.readouterr().err)
    assert db.exists() and Ledger(f"sqlite:///{db}").placements()
    texts.append(db.read_bytes().decode("latin-1"))
    assert all(planted not in text for text in texts)


@pytest.mark.harness
def test_budget_automation_from_the_docs_fires(prefect_harness, ledger_url) -> None:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import EventTrigger, Posture

    automation = Automation(
        name="cloudsched-budget-overrun",
        trigger=EventTrigger(
            expect={"cloudsched.budget.exceeded"},
            match={"prefect.resource.id": "cloudsched.budget.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[DoNothing()],
    ).create()
    policy = CloudSchedPolicy(
        budget_per_run_usd=_cheapest_cpu_cost() / 2, budget_enforcement="soft"
    )

    @flow(name="automation-demo", task_runner=CloudSchedTaskRunner(policy=policy))
    def overrun() -> int:
        return add.submit(1).result()

    overrun()
    deadline = time.monotonic() + 45
    fired: list = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not fired:
            response = client._client.post(
                "/events/filter",
                json={
                    "filter": {
                        "event": {"prefix": ["prefect.automation.triggered"]},
                        "resource": {"id": [f"prefect.automation.{automation.id}"]},
                    },
                    "limit": 5,
                },
            )
            fired = response.json()["events"]
            time.sleep(1)
    assert fired, "the budget automation did not fire"


class _InterruptFirstSpot(RecordingProvisioner):
    """A provisioner stand-in: the first spot instance is reclaimed, everything else runs."""

    def check(self, handle: Any) -> None:
        if handle.option == "spot" and handle == self.started[0]:
            raise SpotInterrupted(handle.instance_id, handle.offer_key)


@pytest.mark.harness
def test_spot_interruption_emits_an_event_and_shows_in_the_table(
    prefect_harness, ledger_url
) -> None:
    from prefect_cloudsched.prefect.visibility import EVENT_INTERRUPTED
    from prefect_cloudsched.testing.executor import stand_in_runner

    @requires(gpus=1, gpu_type="A10G", spot_ok=True, deadline=timedelta(hours=3))
    @task
    def train() -> str:
        time.sleep(0.2)
        return "ok"

    runner = stand_in_runner(_InterruptFirstSpot())

    @flow(name="interrupted-demo", task_runner=runner)
    def interrupted() -> str:
        return train.submit().result()

    state = interrupted(return_state=True)
    assert state.result() == "ok"
    run_id = str(state.state_details.flow_run_id)
    events = _read_events([EVENT_INTERRUPTED], run_id, lambda found: len(found) >= 1)
    assert len(events) == 1
    payload = events[0]["payload"]
    assert payload["instance_id"] == "i-0" and payload["wasted_usd"] > 0  # the first one
    assert payload["offer"].endswith("/spot") and payload["task"] == "train"
    roles = {r["prefect.resource.role"] for r in events[0]["related"]}
    assert {"flow-run", "task-run"} <= roles
    decided = _read_events([EVENT_DECIDED], run_id, lambda found: len(found) >= 2)
    assert sorted(e["payload"]["attempt"] for e in decided) == [1, 2]
    table = _artifacts(run_id)["cloudsched-cost-interrupted-demo"].data
    rows = table if isinstance(table, list) else json.loads(table)
    assert [r["interrupted"] for r in rows] == [True, False]
