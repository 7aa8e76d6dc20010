"""The reaper (library and CLI) and the runner's own exit path, against ``MockClouds``.

One ``MockClouds`` (moto server + fake GCE) per module; each test uses its own owner id, so
tests never see each other's instances. Foreign instances are planted to prove the reaper
and ``release_run`` never touch what we did not start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect import flow, task

from prefect_cloudsched import CloudSchedTaskRunner, requires
from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.adapters.provision.aws import AwsProvisioner
from prefect_cloudsched.adapters.provision.base import HEARTBEAT_TAG, OWNER_TAG
from prefect_cloudsched.adapters.provision.gcp import GcpProvisioner
from prefect_cloudsched.adapters.provision.lifecycle import OwnedInstance
from prefect_cloudsched.adapters.provision.reaper import (
    ORPHANS_FLOW,
    orphan_record,
    reap,
    stale_reason,
)
from prefect_cloudsched.cli import main
from prefect_cloudsched.core.catalog import PurchaseOption, load_catalog
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.core.records import to_micro
from prefect_cloudsched.testing.clouds import MockClouds
from prefect_cloudsched.testing.executor import InstanceStandInExecutor

AWS_OD = "aws/us-east-1/m5.large/on-demand"


@pytest.fixture(scope="module")
def clouds() -> Iterator[MockClouds]:
    with MockClouds(owner_id="reaper-tests", heartbeat_seconds=0, record_instances=False) as mc:
        yield mc


def gcp_offer():
    return next(
        o
        for o in load_catalog().offers
        if o.cloud == "gcp"
        and o.zone == "us-central1-a"
        and o.instance_type == "e2-small"
        and o.option is PurchaseOption.ON_DEMAND
    )


def pair(clouds: MockClouds, owner: str, ledger_url: str) -> tuple[AwsProvisioner, GcpProvisioner]:
    aws = AwsProvisioner(
        replace(
            clouds.aws_settings,
            owner_id=owner,
            regions=("us-east-1",),
            ledger_url=ledger_url,
            record_instances=True,
            heartbeat_seconds=0,
        )
    )
    gcp = GcpProvisioner(
        replace(
            clouds.gcp_settings,
            owner_id=owner,
            ledger_url=ledger_url,
            record_instances=True,
            heartbeat_seconds=0,
        )
    )
    return aws, gcp


def age_heartbeat(clouds: MockClouds, cloud: str, instance_id: str, seconds: float) -> None:
    """Make an instance look as if its process died ``seconds`` ago."""
    stamp = str(int(time.time() - seconds))
    if cloud == "aws":
        clouds.moto.backend("us-east-1").create_tags([instance_id], {HEARTBEAT_TAG: stamp})
        return
    for vm in clouds.gcp.state.instances(clouds.project):
        if vm["name"] == instance_id:
            zone = vm["zone"].rsplit("/", 1)[-1]
    from google.cloud import compute_v1

    client = compute_v1.InstancesClient(**clouds.gcp.client_kwargs())
    vm = client.get(project=clouds.project, zone=zone, instance=instance_id)
    client.set_labels_unary(
        project=clouds.project,
        zone=zone,
        instance=instance_id,
        instances_set_labels_request_resource=compute_v1.InstancesSetLabelsRequest(
            labels={**dict(vm.labels), HEARTBEAT_TAG: stamp},
            label_fingerprint=vm.label_fingerprint,
        ),
    )


def live_ids(clouds: MockClouds, owner: str | None = None) -> set[str]:
    return {i["instance_id"] for i in clouds.running_instances(owner_id=owner)}


def owned(heartbeat: float | None, launched_ago: float | None = None) -> OwnedInstance:
    launched = (
        datetime.now(UTC) - timedelta(seconds=launched_ago) if launched_ago is not None else None
    )
    return OwnedInstance(
        "aws",
        "i-1",
        "us-east-1",
        None,
        "m5.large",
        "running",
        "o",
        "r",
        "t",
        "spot",
        True,
        heartbeat,
        launched,
    )


def test_stale_reason_rules() -> None:
    now = time.time()
    assert stale_reason(owned(now - 10), now=now, heartbeat_ttl=60) is None
    assert "heartbeat 120 s old" in stale_reason(owned(now - 120), now=now, heartbeat_ttl=60)
    assert stale_reason(owned(None, launched_ago=10), now=now, heartbeat_ttl=60) is None
    assert "no heartbeat" in stale_reason(owned(None, launched_ago=600), now=now, heartbeat_ttl=60)
    assert "ledger" in stale_reason(owned(now), now=now, heartbeat_ttl=60, ended_ids={"i-1"})
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="heartbeat_ttl"):
            reap([], heartbeat_ttl=bad)


class _Listing:
    """A provisioner that lists fixed instances and must never terminate one (dry run)."""

    cloud = "aws"

    def __init__(self, *instances: OwnedInstance) -> None:
        self.instances = list(instances)

    def list_owned(self) -> list[OwnedInstance]:
        return self.instances

    def terminate_owned(self, instance: OwnedInstance) -> bool:
        raise AssertionError("a dry run terminated an instance")


def test_kept_reason_says_what_kept_it() -> None:
    now = time.time()
    cases = [
        (owned(now - 10), "alive (heartbeat 10 s old)"),
        (owned(None, launched_ago=30), "alive (no heartbeat yet, launched 30 s ago)"),
        (owned(None), "kept (no heartbeat and launch time unknown)"),
    ]
    for instance, reason in cases:
        [action] = reap([_Listing(instance)], heartbeat_ttl=60, dry_run=True, now=now)
        assert not action.reap and action.reason == reason
        assert "fresh heartbeat" not in action.reason


def test_orphan_row_counts_from_launch_or_from_its_release() -> None:
    ended = datetime(2026, 11, 1, 12, tzinfo=UTC)
    instance = replace(owned(None), launched_at=ended - timedelta(hours=1))
    row = orphan_record(instance, ended_at=ended, usd_per_hour=1.5)
    assert row.cost_micro == to_micro(1.5) and row.runtime_s == 3600
    assert row.wasted_micro == row.cost_micro and row.baseline_micro == 0  # all of it waste
    assert "from launch" in row.explanation and row.flow_name == ORPHANS_FLOW
    unknown_launch = replace(instance, launched_at=None)
    released = {"terminated_at": (ended - timedelta(minutes=30)).replace(tzinfo=None)}
    late = orphan_record(unknown_launch, ended_at=ended, usd_per_hour=1.5, ledger_row=released)
    assert late.cost_micro == to_micro(0.75) and "from its release" in late.explanation


def test_orphan_row_bills_the_cloud_minimum_less_what_its_task_rows_paid() -> None:
    # 45 s orphans were billed 45 s (the clouds bill 60), and a task row already charged
    # on the instance was counted again (the audit: 29 % low, 81 micro-dollars twice)
    from prefect_cloudsched.core.accounting import dearer_reasons, instance_billed_micro
    from prefect_cloudsched.testing.records import placement_record

    ended = datetime(2026, 11, 1, 12, tzinfo=UTC)
    instance = replace(owned(None), launched_at=ended - timedelta(seconds=45))
    short = orphan_record(instance, ended_at=ended, usd_per_hour=3.6)
    assert short.cost_micro == instance_billed_micro(to_micro(3.6), 45, "on-demand") == 60_000
    assert dearer_reasons(short) == ("orphan",)
    longer = replace(instance, launched_at=ended - timedelta(seconds=600))
    task = placement_record("t", cost_usd=0.2, instance_id=instance.instance_id,
                            runtime_s=200.0)  # fmt: skip
    other = replace(task, instance_id="i-someone-else")
    row = orphan_record(longer, ended_at=ended, usd_per_hour=3.6, charged=[task, other])
    assert row.cost_micro == to_micro(3.6 * 600 / 3600) - to_micro(0.2)  # the rest of the bill
    assert row.runtime_s == 400 and "less $0.200000 its 1 row(s) paid" in row.explanation
    # an orphan stands for the attempt that died only when no task row was charged on it
    from prefect_cloudsched.core.report import is_attempt

    assert is_attempt(short) and not is_attempt(row)


def test_reap_only_stale_instances_of_our_owner(clouds: MockClouds, tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'l.db'}"
    aws, gcp = pair(clouds, "owner-a", ledger_url)
    od = load_catalog().find(AWS_OD)
    fresh_aws = aws.ensure(od, run_id="alive", task_name="t")
    dead_aws = aws.ensure(od, run_id="dead", task_name="t")
    fresh_gcp = gcp.ensure(gcp_offer(), run_id="alive", task_name="t")
    dead_gcp = gcp.ensure(gcp_offer(), run_id="dead", task_name="t")
    for cloud, handle in (("aws", dead_aws), ("gcp", dead_gcp)):
        age_heartbeat(clouds, cloud, handle.instance_id, 3600)
    foreign = {
        clouds.plant_foreign_instance("aws", owner_id="someone-else", run_id="dead"),
        clouds.plant_foreign_instance("aws"),
        clouds.plant_foreign_instance("gcp", owner_id="someone-else"),
        clouds.plant_foreign_instance("gcp"),
    }
    before = live_ids(clouds)

    dry = reap([aws, gcp], heartbeat_ttl=600, dry_run=True)
    assert {a.instance.instance_id for a in dry if a.reap} == {
        dead_aws.instance_id,
        dead_gcp.instance_id,
    }
    assert not any(a.done for a in dry) and live_ids(clouds) == before

    actions = reap([aws, gcp], heartbeat_ttl=600, ledger=Ledger(ledger_url))
    assert {a.instance.instance_id for a in actions if a.done} == {
        dead_aws.instance_id,
        dead_gcp.instance_id,
    }
    assert live_ids(clouds) == before - {dead_aws.instance_id, dead_gcp.instance_id}
    assert foreign <= live_ids(clouds)
    assert {fresh_aws.instance_id, fresh_gcp.instance_id} <= live_ids(clouds, "owner-a")
    rows = {r["instance_id"]: r["state"] for r in Ledger(ledger_url).instances()}
    assert rows[dead_aws.instance_id] == rows[dead_gcp.instance_id] == "reaped"
    orphans = {r.instance_id: r for r in Ledger(ledger_url).placements()}
    assert set(orphans) == {dead_aws.instance_id, dead_gcp.instance_id}  # one row per orphan
    for orphan in orphans.values():
        assert orphan.state == "reaped" and orphan.flow_name == ORPHANS_FLOW
        assert orphan.flow_run_id == "dead"
        assert orphan.cost_micro > 0 and orphan.wasted_micro == orphan.cost_micro
        price = load_catalog().find(orphan.offer_key).usd_per_hour
        assert orphan.price_micro_per_hour == to_micro(price)
    aws.release_run("alive")
    gcp.release_run("alive")
    assert live_ids(clouds, "owner-a") == set()


def test_instance_ended_in_the_ledger_but_running_is_reaped(
    clouds: MockClouds, tmp_path: Path
) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'l.db'}"
    aws, _ = pair(clouds, "owner-b", ledger_url)
    handle = aws.ensure(load_catalog().find(AWS_OD), run_id="r", task_name="t")
    Ledger(ledger_url).upsert_instance(instance_id=handle.instance_id, state="terminated")
    actions = reap([aws], heartbeat_ttl=3600, ledger=Ledger(ledger_url))
    assert [(a.instance.instance_id, a.done) for a in actions] == [(handle.instance_id, True)]
    assert live_ids(clouds, "owner-b") == set()


def test_owner_changed_between_list_and_terminate_is_spared(
    clouds: MockClouds, tmp_path: Path
) -> None:
    aws, _ = pair(clouds, "owner-c", f"sqlite:///{tmp_path / 'l.db'}")
    handle = aws.ensure(load_catalog().find(AWS_OD), run_id="r", task_name="t")
    [instance] = aws.list_owned()
    clouds.moto.backend("us-east-1").create_tags([handle.instance_id], {OWNER_TAG: "new-owner"})
    assert aws.terminate_owned(instance) is False
    assert handle.instance_id in live_ids(clouds, "new-owner")


def test_reap_cli(clouds: MockClouds, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'l.db'}"
    aws, gcp = pair(clouds, "owner-d", ledger_url)
    dead = aws.ensure(load_catalog().find(AWS_OD), run_id="dead", task_name="t")
    dead_vm = gcp.ensure(gcp_offer(), run_id="dead", task_name="t")
    age_heartbeat(clouds, "aws", dead.instance_id, 3600)
    age_heartbeat(clouds, "gcp", dead_vm.instance_id, 3600)
    foreign = clouds.plant_foreign_instance("aws", owner_id="other")
    args = [
        "reap",
        "--owner", "owner-d",
        "--mock", f"aws={clouds.aws_url}",
        "--mock", f"gcp={clouds.gcp_url}",
        "--region", "us-east-1",
        "--heartbeat-ttl", "600",
        "--ledger-url", ledger_url,
    ]  # fmt: skip
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 would be terminated" in out
    assert {dead.instance_id, dead_vm.instance_id} <= live_ids(clouds)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 terminated" in out
    assert live_ids(clouds, "owner-d") == set() and foreign in live_ids(clouds)
    assert main(["report", "--ledger", ledger_url, "-f", "json"]) == 0
    groups = {r["group"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert groups[ORPHANS_FLOW]["tasks"] == 2 and float(groups[ORPHANS_FLOW]["spend_usd"]) > 0


def test_reap_scans_only_the_clouds_named(
    clouds: MockClouds, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    from prefect_cloudsched.adapters.provision import factory

    built: list[str] = []
    real = factory.build_provisioner

    def spy(settings, *args, **kwargs):
        built.append(type(settings).__name__)
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(factory, "build_provisioner", spy)
    ledger_url = f"sqlite:///{tmp_path / 'l.db'}"
    argv = ["reap", "--owner", "owner-f", "--mock", f"gcp={clouds.gcp_url}"]
    assert main([*argv, "--ledger-url", ledger_url]) == 0
    assert built == ["GcpSettings"]  # AWS is not named: not scanned, no credentials used
    assert "0 terminated" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mock", "aws"], "--mock 'aws'"),
        (["--heartbeat-ttl", "0"], "--heartbeat-ttl"),
        (["--heartbeat-ttl", "nan"], "--heartbeat-ttl must be a finite number"),
        (["--heartbeat-ttl", "-5"], "--heartbeat-ttl -5"),
        (["--cloud", "gcp"], "--gcp-project is required"),
        (["--owner", "", "--mock", "aws=http://127.0.0.1:1"], "--owner '' is empty"),
        (["--owner", "   ", "--mock", "aws=http://127.0.0.1:1"], "--owner '   ' is empty"),
    ],
)
def test_reap_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["reap", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------- the runner's exit path
def _flow_runner(clouds: MockClouds, owner: str) -> CloudSchedTaskRunner:
    aws = AwsProvisioner(
        replace(
            clouds.aws_settings,
            owner_id=owner,
            warm_seconds=300,
            record_instances=True,
            ledger_url=None,  # the runner's ledger ($PREFECT_CLOUDSCHED_LEDGER_URL)
        )
    )
    return CloudSchedTaskRunner(
        provisioners={"aws": aws},
        executor=InstanceStandInExecutor(),
        policy=PolicyConfig(
            allowed_clouds=frozenset({"aws"}), allowed_regions=frozenset({"us-east-1"})
        ),
        label_task_runs=False,
    )


@requires(cpus=2, memory_gib=4, est_runtime=timedelta(minutes=5), spot_ok=False)
@task
def small_step(x: int) -> int:
    return x + 1


@pytest.mark.harness
@pytest.mark.parametrize(
    ("owner", "ending"),
    [
        ("exit-fail", RuntimeError("boom")),
        ("exit-crash", SystemExit(3)),  # a crash (as on a cancellation signal), not an error
    ],
    ids=["fails", "crashes"],
)
def test_runner_releases_its_instances_when_the_flow_fails_or_crashes(
    prefect_harness, ledger_url, clouds: MockClouds, owner: str, ending: BaseException
) -> None:
    @flow(task_runner=_flow_runner(clouds, owner))
    def ends_badly() -> None:
        small_step.submit(1).result()  # its instance stays warm (warm_seconds=300) ...
        raise ending  # ... until the runner's exit path ends it

    with pytest.raises(type(ending), match=str(ending)):
        ends_badly()
    started = [i for i in Ledger(ledger_url).instances() if i["owner_id"] == owner]
    assert started, "the task ran on a mock instance"
    assert live_ids(clouds, owner) == set()
