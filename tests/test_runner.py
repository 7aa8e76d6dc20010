"""CloudSchedTaskRunner under a real Prefect engine (one harness per session)."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from pathlib import Path

import cloudpickle
import pytest
from prefect import flow, task

from prefect_cloudsched import CloudSchedTaskRunner, Ledger, requires
from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.core.report import build_report
from prefect_cloudsched.errors import CapacityError, SpotInterrupted
from prefect_cloudsched.testing.executor import stand_in_runner
from prefect_cloudsched.testing.provisioners import RecordingProvisioner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_duplicate_equality_and_pickling_carry_configuration() -> None:
    runner = CloudSchedTaskRunner(
        max_workers=3,
        reserved={"aws/us-east-1/g5.xlarge": 1},
        policy=PolicyConfig(allowed_clouds=frozenset({"aws"})),
    )
    assert runner.duplicate() == runner
    assert cloudpickle.loads(cloudpickle.dumps(runner)) == runner
    assert runner != CloudSchedTaskRunner(max_workers=3)
    with pytest.raises(ValueError, match="max_workers"):
        CloudSchedTaskRunner(max_workers=0)
    with pytest.raises(ValueError, match="reserved"):
        CloudSchedTaskRunner(reserved={"k": -1})


@pytest.mark.harness
def test_ml_pipeline_ledger_rows_match_report(prefect_harness, ledger_url) -> None:
    from flows.ml_pipeline import ml_pipeline

    result = ml_pipeline(chunks=3)
    assert result["test_accuracy"] > 0.9
    rows = Ledger(ledger_url).placements()
    names = [r.task_name for r in rows]
    assert names.count("train_candidate") == 4 and names.count("batch_inference") == 3
    assert {"load_dataset", "prepare_features", "evaluate", "pick_best"} <= set(names)
    assert all(r.state == "completed" and r.runtime_s > 0 for r in rows)
    # the real-time candidate (call-site override) never goes to spot; the others may
    train = [r for r in rows if r.task_name == "train_candidate"]
    assert sum(r.gpu_type == "T4" and r.option == "on-demand" for r in train) == 1
    assert any(r.option == "spot" for r in rows)
    report = build_report(rows, "task")
    assert report.total.spend_micro == sum(r.cost_micro for r in rows)
    assert report.total.baseline_micro == sum(r.baseline_micro for r in rows)
    assert report.total.spend_micro < report.total.baseline_micro
    for r in rows:
        expected = round(r.price_micro_per_hour * r.runtime_s / 3600)
        assert abs(r.cost_micro - expected) <= 1


@pytest.mark.harness
def test_unplaceable_task_fails_cleanly_and_flow_continues(prefect_harness, ledger_url) -> None:
    @requires(gpus=64)
    @task
    def too_big() -> int:
        return 1

    @task
    def fine() -> int:
        return 2

    @flow(task_runner=CloudSchedTaskRunner(max_workers=2))
    def f() -> tuple:
        bad, good = too_big.submit(), fine.submit()
        bad.wait()
        return bad.state, good.result()

    state, value = f()
    assert state.is_failed() and value == 2
    assert "cannot be placed" in state.message and "largest instance has" in state.message
    assert [r.task_name for r in Ledger(ledger_url).placements()] == ["fine"]


class FlakyProvisioner(RecordingProvisioner):
    """Interrupts the first spot instance and refuses one offer, like a real cloud would."""

    def __init__(self) -> None:
        super().__init__("aws")
        self.refused = 0

    def ensure(
        self, offer: Offer, *, run_id: str, task_name: str, startup_script: str | None = None
    ) -> InstanceHandle:
        if offer.region == "eu-north-1" and self.refused == 0:
            self.refused += 1
            raise CapacityError(offer.key, "InsufficientInstanceCapacity", "no g5 here")
        return super().ensure(
            offer, run_id=run_id, task_name=task_name, startup_script=startup_script
        )

    def check(self, handle: InstanceHandle) -> None:
        spot = [h for h in self.started if h.option == "spot"]
        if spot and handle == spot[0]:
            raise SpotInterrupted(handle.instance_id, handle.offer_key)


@pytest.mark.harness
def test_capacity_fallback_and_spot_interruption_recovery(prefect_harness, ledger_url) -> None:
    provisioner = FlakyProvisioner()

    @requires(
        gpus=1,
        gpu_type="A10G",
        est_runtime=timedelta(minutes=10),
        deadline=timedelta(hours=3),
        spot_ok=True,
    )
    @task
    def train() -> str:
        time.sleep(0.2)  # long enough for a non-zero bill in micro-dollars
        return "ok"

    @flow(task_runner=stand_in_runner(provisioner))
    def f() -> str:
        return train.submit().result()

    assert f() == "ok"
    assert provisioner.refused == 1
    assert sorted(provisioner.released) == sorted(h.instance_id for h in provisioner.started)
    ledger = Ledger(ledger_url)
    rows = ledger.placements()
    assert [r.state for r in rows] == ["interrupted", "completed"]
    assert rows[0].interruptions == 1 and rows[0].wasted_micro == rows[0].cost_micro > 0
    assert rows[0].baseline_micro == 0 and rows[1].baseline_micro > 0
    assert rows[0].offer_key != "aws/eu-north-1/g5.xlarge/spot"  # blocked after the refusal
    assert len(ledger.interruptions()) == 1
    report = build_report(rows, "flow")
    assert report.total.interruptions == 1


@pytest.mark.harness
def test_async_tasks_and_call_site_tags(prefect_harness, ledger_url) -> None:
    from prefect import tags

    @task
    async def infer(x: int) -> int:
        await asyncio.sleep(0.01)
        return x + 1

    @flow(task_runner=CloudSchedTaskRunner(max_workers=2))
    async def f() -> list[int]:
        with tags("gpu:1", "gpu-type:L4"):
            futures = infer.map([1, 2])
        return [fut.result() for fut in futures]

    assert asyncio.run(f()) == [2, 3]
    rows = Ledger(ledger_url).placements()
    assert {r.gpu_type for r in rows} == {"L4"}


def test_label_mode_validated() -> None:
    assert CloudSchedTaskRunner(label_task_runs=True) == CloudSchedTaskRunner(label_task_runs="all")
    with pytest.raises(ValueError, match="label_task_runs"):
        CloudSchedTaskRunner(label_task_runs="some")


def _tags_by_task(flow_run_id: object) -> dict[str, set[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: set(r.tags) for r in runs}


@pytest.mark.harness
@pytest.mark.parametrize("mode", ["declared", "all", "none"])
def test_decision_tag_goes_where_the_mode_says(prefect_harness, ledger_url, mode: str) -> None:
    from prefect.runtime import flow_run

    @requires(gpus=1)
    @task
    def gpu_step() -> int:
        return 1

    @task
    def plain_step() -> int:
        return 2

    @flow(task_runner=CloudSchedTaskRunner(label_task_runs=mode))
    def f() -> str:
        gpu_step.submit().result()
        plain_step.submit().result()
        return flow_run.id

    tags_of = _tags_by_task(f())
    choice = {
        r.task_name: f"cloudsched:{r.cloud}-{r.option}" for r in Ledger(ledger_url).placements()
    }
    gpu_tag = {t for t in tags_of["gpu_step"] if t.startswith("cloudsched:")}
    plain_tag = {t for t in tags_of["plain_step"] if t.startswith("cloudsched:")}
    assert gpu_tag == (set() if mode == "none" else {choice["gpu_step"]})
    assert plain_tag == ({choice["plain_step"]} if mode == "all" else set())
    assert set(choice) == {"gpu_step", "plain_step"}  # both in the ledger either way


class _BrokenAttachExecutor:
    """An executor whose attach fails after the instance has started."""

    name = "broken"
    runs_on_instance = True

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def startup_script(self, offer: Offer, run_id: str) -> str | None:
        return None

    def attach(self, handle: InstanceHandle, placement: object) -> None:
        raise RuntimeError("worker never joined")

    def detach(self, handle: InstanceHandle) -> None:
        raise AssertionError("detach without attach")

    def run(self, call, placement):
        return call()


@pytest.mark.harness
def test_failed_attach_releases_the_started_instance(prefect_harness, ledger_url) -> None:
    provisioner = FlakyProvisioner()

    @requires(gpus=1, gpu_type="A10G", spot_ok=False)
    @task
    def train() -> str:
        return "never"

    @flow(task_runner=stand_in_runner(provisioner, _BrokenAttachExecutor()))
    def f() -> tuple[bool, str]:
        future = train.submit()
        future.wait()
        return future.state.is_failed(), str(future.state.message)

    failed, message = f()
    assert failed and "worker never joined" in message
    assert provisioner.started, "the instance should have been started"
    assert sorted(provisioner.released) == sorted(h.instance_id for h in provisioner.started)
    rows = Ledger(ledger_url).placements()
    assert [r.state for r in rows] == ["failed"]


@pytest.mark.harness
def test_demo_provisions_on_mock_clouds_and_leaves_nothing(
    prefect_harness, ledger_url, capsys
) -> None:
    """The README's main command: real SDK calls on the mocks, one injected interruption."""
    from flows.ml_pipeline import main

    result = main(["--chunks", "2"])
    assert result["test_accuracy"] > 0.9
    out = capsys.readouterr().out
    assert "spot reclaims injected by the mock: 1;" in out
    assert "still running: 0 instances, 0 workers" in out
    # the summary's ledger count is the report's: reclaims plus any worker lost under load
    recorded = sum(r.interruptions for r in Ledger(ledger_url).placements())
    assert f"interruptions recorded in the ledger (reclaims and lost workers): {recorded};" in out
    ledger = Ledger(ledger_url)
    instances = ledger.instances()
    placed = [r for r in ledger.placements() if r.instance_id]
    assert instances and {i["instance_id"] for i in instances} == {r.instance_id for r in placed}
    assert all(i["terminated_at"] is not None for i in instances)
    assert [r.state for r in ledger.placements()].count("interrupted") == 1
    assert len(ledger.interruptions()) == 1


class PricedProvisioner(FlakyProvisioner):
    """Answers spot-price and reservation queries like the AWS provisioner does."""

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.settings = SimpleNamespace(regions=("us-east-1",))

    def check(self, handle: InstanceHandle) -> None:
        return None

    def spot_prices(self, region: str, instance_types: object) -> dict[str, float]:
        return {"g5.xlarge": 0.01}

    def owned_reservations(self) -> dict[str, int]:
        return {"aws/us-east-1/g5.2xlarge": 1}


@pytest.mark.harness
def test_live_spot_prices_and_owned_reservations_reach_decisions(
    prefect_harness, ledger_url
) -> None:
    import json

    @requires(gpus=1, gpu_type="A10G", spot_ok=True, deadline=timedelta(hours=3))
    @task
    def train() -> str:
        time.sleep(1.0)  # both tasks hold their instance at the same time
        return "ok"

    def run(live: bool) -> list:
        @flow(task_runner=stand_in_runner(PricedProvisioner(), live_prices=live))
        def f() -> list:
            futures = [train.submit(), train.submit()]  # both in flight at once
            return [fut.result() for fut in futures]

        f()
        rows = Ledger(ledger_url).placements()[-2:]
        return sorted((r.offer_key, json.loads(r.decision_json)["price_source"]) for r in rows)

    reserved, spot = run(live=True)
    # the owned reservation is idle capacity: one task takes it at zero marginal cost ...
    assert reserved[0] == "aws/us-east-1/g5.2xlarge/reserved"
    # ... the other finds it busy, and the live spot price (far below the snapshot's) wins
    assert spot == ("aws/us-east-1/g5.xlarge/spot", "live:aws-spot-price-history")
    snapshot_rows = run(live=False)
    assert all(source != "live:aws-spot-price-history" for _, source in snapshot_rows)


class QuietProvisioner(FlakyProvisioner):
    """Starts everything it is asked to, never interrupts."""

    def check(self, handle: InstanceHandle) -> None:
        return None


@pytest.mark.harness
def test_mapped_gpu_tasks_share_one_idle_reserved_host(prefect_harness, ledger_url) -> None:
    import json

    provisioner = QuietProvisioner()

    @requires(gpus=1, gpu_type="A10G", spot_ok=True, deadline=timedelta(hours=4))
    @task
    def shard(i: int) -> int:
        time.sleep(0.3)
        return i

    def run(pack: bool) -> list:
        @flow(
            task_runner=stand_in_runner(
                provisioner,
                max_workers=4,
                reserved={"aws/us-east-1/g5.12xlarge": 1},
                pack_maps=pack,
            )
        )
        def f() -> list[int]:
            return shard.map(range(4)).result()

        assert f() == [0, 1, 2, 3]
        return Ledger(ledger_url).placements()[-4:]

    rows = run(pack=True)
    # one 4-GPU reserved host for the four 1-GPU tasks, started once and released once
    assert len(provisioner.started) == 1 and provisioner.released == ["i-0"]
    assert {r.offer_key for r in rows} == {"aws/us-east-1/g5.12xlarge/reserved"}
    assert {r.instance_id for r in rows} == {"i-0"}
    assert all("packed: shares one" in json.loads(r.decision_json)["reasons"][-1] for r in rows)
    # each member pays a quarter of the host for its own runtime; the last also pays the rest
    price = rows[0].price_micro_per_hour
    shares = sorted(r.cost_micro - round(price * r.runtime_s / 3600 / 4) for r in rows)
    assert all(abs(x) <= 1 for x in shares[:3]) and shares[3] >= 0
    assert sum(r.baseline_micro for r in rows) > sum(r.cost_micro for r in rows)

    rows = run(pack=False)  # one instance per task: the reserved host serves one of them
    assert len(provisioner.started) == 5
    assert sum(r.offer_key.endswith("/reserved") for r in rows) >= 1
    assert len({r.instance_id for r in rows}) == 4


def test_submit_decisions_are_reused_only_while_state_and_clock_allow(tmp_path) -> None:
    from datetime import UTC, datetime

    from prefect_cloudsched.core.needs import TaskNeeds
    from prefect_cloudsched.testing.session import runtime_session

    ctx = runtime_session(tmp_path, spot_retries=1)
    try:
        needs = TaskNeeds(gpus=1, gpu_type="A10G", spot_ok=True, deadline=timedelta(hours=4))
        t0 = datetime.now(UTC)
        first = ctx.decisions.fresh(needs, submitted_at=t0)
        again = ctx.decisions.fresh(needs, submitted_at=t0 + timedelta(seconds=5))
        assert again.offer == first.offer and again.decided_at == t0 + timedelta(seconds=5)
        assert again.deadline == t0 + timedelta(hours=4, seconds=5)
        # a blocked offer changes the state: the next decision is made afresh
        ctx.state.block(first.offer.key, "InsufficientInstanceCapacity")
        after = ctx.decisions.fresh(needs, submitted_at=t0)
        assert after.offer != first.offer
        # an absolute deadline is never served from memory
        absolute = needs.merged({"deadline": t0 + timedelta(minutes=20)})
        tight = ctx.decisions.fresh(absolute, submitted_at=t0)
        assert tight.offer.option.value == "on-demand"
    finally:
        ctx.writer.close()


@pytest.mark.harness
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"ledger": "no-such-ledger-block"}, "no-such-ledger-block"),
        ({"ledger_url": "nosuchdriver://nowhere/l.db"}, "nosuchdriver"),
    ],
)
def test_a_runner_that_cannot_start_fails_the_flow_run(prefect_harness, options, reason) -> None:
    """It used to raise out of the engine and leave the flow run RUNNING on the server."""
    from prefect.client.orchestration import get_client

    @task
    def step() -> int:
        return 1

    @flow(task_runner=CloudSchedTaskRunner(**options))
    def f() -> int:
        return step.submit().result()

    state = f(return_state=True)
    assert state.is_failed()
    assert reason in state.message and "\n" not in state.message.strip()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state.is_failed()
