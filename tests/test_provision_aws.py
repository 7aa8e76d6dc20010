"""AWS provisioner against in-process moto (``mock_aws``) plus ``MotoControl`` faults.

Every test starts from a fresh moto backend; nothing reaches AWS (dummy keys, loopback only).
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.adapters.provision.aws import (
    LIVE_SOURCE,
    AwsProvisioner,
    AwsSettings,
    refresh_spot_prices,
)
from prefect_cloudsched.adapters.provision.base import HEARTBEAT_TAG, RUN_TAG, TASK_TAG, Provisioner
from prefect_cloudsched.adapters.provision.factory import build_provisioner
from prefect_cloudsched.adapters.provision.images import (
    AWS_CPU_PARAMETER,
    aws_arch,
)
from prefect_cloudsched.core.catalog import Offer, load_catalog
from prefect_cloudsched.errors import CapacityError, ProvisioningError, SpotInterrupted
from prefect_cloudsched.testing.aws import MOCK_AMI, MotoControl
from prefect_cloudsched.testing.clouds import publish_aws_gpu_image
from prefect_cloudsched.testing.offers import shipped_offer
from prefect_cloudsched.testing.provisioners import FAST_BACKOFF, assert_launch_marks

REGION = "us-east-1"


def offer(instance_type: str = "g5.xlarge", option: str = "spot", region: str = REGION) -> Offer:
    return shipped_offer("aws", instance_type, option, region)


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoControl]:
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # ~0.3 s per backend saved
    with mock_aws(), MotoControl() as control:
        yield control


@pytest.fixture
def settings(tmp_path: Path) -> AwsSettings:
    return AwsSettings(
        regions=(REGION, "us-west-2"),
        ami_per_region={REGION: MOCK_AMI, "us-west-2": MOCK_AMI},
        owner_id="tester",
        poll_seconds=0.01,
        backoff=FAST_BACKOFF,
        heartbeat_seconds=0,
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
    )


@pytest.fixture
def make(moto: MotoControl, settings: AwsSettings) -> Callable[..., AwsProvisioner]:
    def factory(**changes: object) -> AwsProvisioner:
        return AwsProvisioner(replace(settings, **changes))

    return factory


@functools.cache
def ec2(region: str = REGION):
    return boto3.client("ec2", region_name=region)


def describe(instance_id: str, region: str = REGION) -> dict:
    return ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"
    ][0]


def running(region: str = REGION) -> list[dict]:
    pages = ec2(region).describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    return [i for r in pages for i in r["Instances"]]


def test_factory_and_protocol(moto: MotoControl, settings: AwsSettings) -> None:
    provisioner = build_provisioner(settings)
    assert isinstance(provisioner, AwsProvisioner)
    assert isinstance(provisioner, Provisioner)
    with pytest.raises(TypeError):
        build_provisioner(object())  # type: ignore[arg-type]


def test_spot_launch_tags_user_data_and_volumes(make: Callable[..., AwsProvisioner]) -> None:
    aws = make()
    script = "#!/bin/bash\necho start-worker\n"
    handle = aws.ensure(offer(), run_id="run-1", task_name="train", startup_script=script)
    instance = describe(handle.instance_id)
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert instance["State"]["Name"] == "running"
    assert instance["InstanceLifecycle"] == "spot"
    assert instance["InstanceType"] == "g5.xlarge"
    assert_launch_marks(tags, owner="tester", run="run-1", task="train", option="spot")
    user_data = ec2().describe_instance_attribute(
        InstanceId=handle.instance_id, Attribute="userData"
    )["UserData"]["Value"]
    assert base64.b64decode(user_data).decode() == script  # encoded once, not twice
    volumes = ec2().describe_volumes(Filters=[{"Name": f"tag:{RUN_TAG}", "Values": ["run-1"]}])
    assert volumes["Volumes"], "volumes carry our tags too"
    assert handle.option == "spot" and handle.zone and handle.zone.startswith(REGION)


def test_on_demand_is_not_spot(make: Callable[..., AwsProvisioner]) -> None:
    handle = make().ensure(offer(option="on-demand"), run_id="r", task_name="t")
    assert "InstanceLifecycle" not in describe(handle.instance_id)


def test_check_detects_spot_interruption(
    moto: MotoControl, make: Callable[..., AwsProvisioner]
) -> None:
    aws = make()
    handle = aws.ensure(offer(), run_id="r", task_name="t")
    aws.check(handle)  # still running: nothing to report
    moto.interrupt(handle.instance_id)
    with pytest.raises(SpotInterrupted) as caught:
        aws.check(handle)
    assert caught.value.instance_id == handle.instance_id
    assert caught.value.offer_key == handle.offer_key
    assert "Server.SpotInstanceTermination" in str(caught.value)
    aws.release(handle)  # releasing an interrupted instance is a no-op, not an error


def test_check_unexpected_end_of_spot_and_on_demand(make: Callable[..., AwsProvisioner]) -> None:
    aws = make()
    spot = aws.ensure(offer(), run_id="r", task_name="t")
    ondemand = aws.ensure(offer(option="on-demand"), run_id="r", task_name="t")
    ec2().terminate_instances(InstanceIds=[spot.instance_id, ondemand.instance_id])
    with pytest.raises(SpotInterrupted):
        aws.check(spot)  # any unexpected end of a spot instance is an interruption
    with pytest.raises(ProvisioningError, match="someone else"):
        aws.check(ondemand)


def test_release_and_release_run_touch_only_their_own(make: Callable[..., AwsProvisioner]) -> None:
    aws = make()
    first = aws.ensure(offer(), run_id="run-a", task_name="t")
    second = aws.ensure(offer(option="on-demand"), run_id="run-a", task_name="t")
    west = aws.ensure(offer(region="us-west-2"), run_id="run-a", task_name="t")
    other_run = aws.ensure(offer(), run_id="run-b", task_name="t")
    foreign = ec2().run_instances(
        ImageId=MOCK_AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="m5.large",
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": RUN_TAG, "Value": "run-a"}]}
        ],
    )["Instances"][0]["InstanceId"]
    aws.release(first)
    assert describe(first.instance_id)["State"]["Name"] == "terminated"
    assert aws.release_run("run-a") == 2
    for handle in (second, west):
        assert describe(handle.instance_id, handle.region)["State"]["Name"] == "terminated"
    assert describe(other_run.instance_id)["State"]["Name"] == "running"
    assert describe(foreign)["State"]["Name"] == "running"  # no owner tag: never touched
    assert [o.instance_id for o in aws.list_owned()] == [other_run.instance_id]


@pytest.mark.parametrize(
    "code",
    [
        "InsufficientInstanceCapacity",
        "VcpuLimitExceeded",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "Unsupported",
    ],
)
def test_capacity_errors_become_capacity_error(
    code: str, moto: MotoControl, make: Callable[..., AwsProvisioner]
) -> None:
    moto.inject(code, instance_type="g5.xlarge")
    aws = make()
    with pytest.raises(CapacityError) as caught:
        aws.ensure(offer(), run_id="r", task_name="t")
    assert caught.value.code == code and caught.value.offer_key == offer().key
    assert running() == []
    aws.ensure(offer(), run_id="r", task_name="t")  # the next attempt goes through


def test_throttled_launch_is_retried_without_duplicates(
    moto: MotoControl, make: Callable[..., AwsProvisioner]
) -> None:
    # EC2 started the instance but the caller saw RequestLimitExceeded, twice: the retries
    # reuse the ClientToken, so EC2 answers with the same instance instead of a new one.
    moto.inject("RequestLimitExceeded", count=2, after=True)
    handle = make().ensure(offer(), run_id="r", task_name="t")
    assert moto.token_hits == 2
    assert [i["InstanceId"] for i in running()] == [handle.instance_id]


def test_throttling_beyond_the_budget_is_a_capacity_error(
    moto: MotoControl, make: Callable[..., AwsProvisioner]
) -> None:
    moto.inject("RequestLimitExceeded", count=FAST_BACKOFF.attempts)
    with pytest.raises(CapacityError, match="RequestLimitExceeded"):
        make().ensure(offer(), run_id="r", task_name="t")
    assert running() == []


def test_two_tasks_of_one_name_get_two_instances(make: Callable[..., AwsProvisioner]) -> None:
    aws = make()
    first = aws.ensure(offer(), run_id="r", task_name="train")  # mapped tasks share a name
    second = aws.ensure(offer(), run_id="r", task_name="train")
    assert first.instance_id != second.instance_id


def test_token_of_an_earlier_process_is_not_reused(
    moto: MotoControl, make: Callable[..., AwsProvisioner]
) -> None:
    earlier = make()
    old = earlier.ensure(offer(), run_id="r", task_name="t")
    earlier.release(old)
    again = make()  # a new process of the same flow run starts its sequence at 0 again
    new = again.ensure(offer(), run_id="r", task_name="t")
    assert moto.token_hits == 1 and new.instance_id != old.instance_id
    assert describe(new.instance_id)["State"]["Name"] == "running"


def test_unknown_region_is_a_one_line_provisioning_error(settings: AwsSettings) -> None:
    with pytest.raises(ProvisioningError, match=r"AwsSettings\.regions: 'us-nowhere-9'"):
        AwsProvisioner(replace(settings, regions=("us-nowhere-9",)))


def test_images_resolve_per_region_from_public_ssm_parameters(
    make: Callable[..., AwsProvisioner],
) -> None:
    aws = make(ami_per_region={})
    cpu_ami = boto3.client("ssm", region_name=REGION).get_parameter(
        Name=AWS_CPU_PARAMETER.format(arch="x86_64")
    )["Parameter"]["Value"]
    cpu = aws.ensure(offer("m5.xlarge", "on-demand"), run_id="r", task_name="cpu")
    assert describe(cpu.instance_id)["ImageId"] == cpu_ami
    publish_aws_gpu_image(REGION, "ami-0123456789abcdef0")
    publish_aws_gpu_image("us-west-2", "ami-0fedcba9876543210")
    east = aws.ensure(offer(), run_id="r", task_name="gpu")
    west = aws.ensure(offer(region="us-west-2"), run_id="r", task_name="gpu")
    assert describe(east.instance_id)["ImageId"] == "ami-0123456789abcdef0"
    assert describe(west.instance_id, "us-west-2")["ImageId"] == "ami-0fedcba9876543210"
    pinned = make(ami_per_region={REGION: MOCK_AMI}).ensure(offer(), run_id="r", task_name="p")
    assert describe(pinned.instance_id)["ImageId"] == MOCK_AMI


def test_image_missing_in_a_region_names_the_setting(make: Callable[..., AwsProvisioner]) -> None:
    with pytest.raises(ProvisioningError, match=r"^AwsSettings\.gpu_image_parameter: .*us-east-1"):
        make(ami_per_region={}).ensure(offer(), run_id="r", task_name="t")
    assert running() == []
    custom = make(ami_per_region={}, cpu_image_parameter="/my/missing/{arch}")
    with pytest.raises(ProvisioningError, match=r"cpu_image_parameter.*/my/missing/x86_64"):
        custom.ensure(offer("m5.xlarge", "on-demand"), run_id="r", task_name="t")


def test_graviton_types_get_arm64_images() -> None:
    assert aws_arch("m7g.large") == "arm64" and aws_arch("c7gn.xlarge") == "arm64"
    assert aws_arch("g5g.xlarge") == "arm64"
    assert aws_arch("g5.xlarge") == "x86_64" and aws_arch("g4dn.xlarge") == "x86_64"


def test_nonexistent_ami_with_validation(
    make: Callable[..., AwsProvisioner], monkeypatch: pytest.MonkeyPatch
) -> None:
    import moto.settings

    monkeypatch.setattr(moto.settings, "ENABLE_AMI_VALIDATION", True)
    aws = make(ami_per_region={REGION: "ami-00000000deadbeef0"})
    with pytest.raises(ProvisioningError, match=r"ami_per_region\['us-east-1'\].*InvalidAMIID"):
        aws.ensure(offer(), run_id="r", task_name="t")
    assert running() == []


def test_subnet_of_another_region_names_the_setting(make: Callable[..., AwsProvisioner]) -> None:
    vpc = ec2().create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2().create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    aws = make(subnet_id={"us-west-2": subnet})
    with pytest.raises(ProvisioningError, match=r"subnet_id\['us-west-2'\].*does not exist"):
        aws.ensure(offer(region="us-west-2"), run_id="r", task_name="t")
    assert running("us-west-2") == []
    good = make(subnet_id=subnet).ensure(offer(), run_id="r", task_name="t")
    assert describe(good.instance_id)["SubnetId"] == subnet


def test_refused_credentials_name_the_setting(
    moto: MotoControl, make: Callable[..., AwsProvisioner]
) -> None:
    moto.inject("AuthFailure", message="AWS was not able to validate the provided access keys")
    with pytest.raises(ProvisioningError, match=r"aws_secret_access_key.*AuthFailure") as caught:
        make(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="s3cr3t-value").ensure(
            offer(), run_id="r", task_name="t"
        )
    assert "s3cr3t" not in str(caught.value)
    assert running() == []
    with pytest.raises(ProvisioningError, match="give both or neither"):
        make(aws_secret_access_key="s3cr3t-value")


def test_missing_credentials(
    make: Callable[..., AwsProvisioner], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ProvisioningError, match="no AWS credentials"):
        make().ensure(offer(), run_id="r", task_name="t")


def test_secret_never_in_repr(settings: AwsSettings) -> None:
    shown = repr(replace(settings, aws_secret_access_key="hunter2-secret"))
    assert "hunter2" not in shown


def test_offer_outside_the_pool_is_refused_as_capacity(
    make: Callable[..., AwsProvisioner],
) -> None:
    with pytest.raises(CapacityError, match="RegionNotInPool"):
        make().ensure(offer(region="eu-central-1"), run_id="r", task_name="t")
    with pytest.raises(CapacityError, match="FamilyNotInPool"):
        make(allowed_families=("p4d",)).ensure(offer(), run_id="r", task_name="t")


def test_heartbeat_is_refreshed(make: Callable[..., AwsProvisioner]) -> None:
    aws = make(heartbeat_seconds=0.05)
    handle = aws.ensure(offer(), run_id="r", task_name="t")
    ec2().create_tags(Resources=[handle.instance_id], Tags=[{"Key": HEARTBEAT_TAG, "Value": "1"}])
    deadline = time.time() + 5
    while time.time() < deadline:
        beat = aws.list_owned()[0].heartbeat
        if beat and beat > 1:
            break
        time.sleep(0.05)
    assert beat is not None and abs(beat - time.time()) < 60
    aws.release(handle)


def test_warm_pool_reuses_then_expires(make: Callable[..., AwsProvisioner]) -> None:
    aws = make(warm_seconds=3.0)  # long enough for a loaded machine to describe it warm
    first = aws.ensure(offer(), run_id="r", task_name="a")
    aws.release(first)
    assert describe(first.instance_id)["State"]["Name"] == "running"  # kept warm
    reused = aws.ensure(offer(), run_id="r", task_name="b")
    assert reused.instance_id == first.instance_id
    tags = {t["Key"]: t["Value"] for t in describe(first.instance_id)["Tags"]}
    assert tags[TASK_TAG] == "b"
    aws.release(reused)
    deadline = time.time() + 15
    while describe(first.instance_id)["State"]["Name"] == "running" and time.time() < deadline:
        time.sleep(0.05)
    assert describe(first.instance_id)["State"]["Name"] == "terminated"


def test_ledger_rows_for_started_and_released(
    make: Callable[..., AwsProvisioner], settings: AwsSettings
) -> None:
    aws = make()
    handle = aws.ensure(offer(), run_id="run-l", task_name="t")
    rows = Ledger(settings.ledger_url).instances(run_id="run-l")
    assert [(r["instance_id"], r["state"], r["owner_id"]) for r in rows] == [
        (handle.instance_id, "running", "tester")
    ]
    aws.release(handle)
    row = Ledger(settings.ledger_url).instances(run_id="run-l")[0]
    assert row["state"] == "terminated" and row["terminated_at"] is not None


def test_live_spot_prices(moto: MotoControl, make: Callable[..., AwsProvisioner]) -> None:
    moto.spot_prices.update(
        {
            ("g5.xlarge", "us-east-1a"): 0.30,
            ("g5.xlarge", "us-east-1b"): 0.50,
            ("g5.xlarge", "us-east-1c"): 0.40,
            ("g4dn.xlarge", "us-east-1a"): 99.0,  # above on-demand: not believed
        }
    )
    catalog = load_catalog()
    refreshed = refresh_spot_prices(catalog, make(regions=(REGION,)))
    g5 = refreshed.find(offer().key)
    assert g5.usd_per_hour == pytest.approx(0.40) and g5.source == LIVE_SOURCE
    g4 = refreshed.find(offer("g4dn.xlarge").key)
    assert g4.source != LIVE_SOURCE and g4.usd_per_hour == offer("g4dn.xlarge").usd_per_hour
    assert refreshed.find(offer(option="on-demand").key) == offer(option="on-demand")
    assert len(refreshed) == len(catalog)


def test_unreachable_prices_keep_the_snapshot(settings: AwsSettings) -> None:
    aws = AwsProvisioner(replace(settings, endpoint_url="http://127.0.0.1:9"))
    catalog = load_catalog()
    assert refresh_spot_prices(catalog, aws) is catalog


def test_owned_reservations_fall_back_to_configuration(make: Callable[..., AwsProvisioner]) -> None:
    aws = make(reservations={"aws/us-east-1/g5.xlarge": 2})
    assert aws.owned_reservations() == {"aws/us-east-1/g5.xlarge": 2}


def test_instance_rows_bill_boot_and_idle_time(
    make: Callable[..., AwsProvisioner], settings: AwsSettings
) -> None:
    """launched_at is the launch request and survives warm reuse: the row spans the bill."""
    from datetime import UTC, datetime, timedelta

    aws = make(warm_seconds=30.0)
    before = datetime.now(UTC)
    first = aws.ensure(offer(), run_id="run-w", task_name="a")
    aws.release(first)  # parked warm: idle from now, still billed
    [parked] = Ledger(settings.ledger_url).instances(run_id="run-w")
    assert parked["state"] == "warm"
    time.sleep(0.2)
    again = aws.ensure(offer(), run_id="run-w", task_name="b")
    assert again.instance_id == first.instance_id
    [row] = Ledger(settings.ledger_url).instances(run_id="run-w")
    assert row["launched_at"] == parked["launched_at"]
    assert before.timestamp() - 1 <= row["launched_at"].timestamp() <= before.timestamp() + 5
    assert aws.release_run("run-w") == 1  # parked or busy, the run's end ends it
    [ended] = Ledger(settings.ledger_url).instances(run_id="run-w")
    assert ended["state"] == "terminated"
    assert ended["terminated_at"] - ended["launched_at"] >= timedelta(seconds=0.2)


def test_warm_instances_cross_runs_only_when_opted_in(
    make: Callable[..., AwsProvisioner],
) -> None:
    closed = make(warm_seconds=30.0)
    first = closed.ensure(offer(), run_id="run-1", task_name="a")
    closed.release(first)
    other = closed.ensure(offer(), run_id="run-2", task_name="a")
    assert other.instance_id != first.instance_id
    closed.release_run("run-1")
    closed.release_run("run-2")
    shared = make(warm_seconds=30.0, warm_across_runs=True)
    first = shared.ensure(offer(), run_id="run-3", task_name="a")
    shared.release(first)
    moved = shared.ensure(offer(), run_id="run-4", task_name="b")
    assert moved.instance_id == first.instance_id and moved.run_id == "run-4"
    tags = {t["Key"]: t["Value"] for t in describe(moved.instance_id)["Tags"]}
    assert tags[RUN_TAG] == "run-4" and tags[TASK_TAG] == "b"
    assert shared.release_run("run-3") == 0  # it belongs to run-4 now
    shared.release(moved)  # parked again, for whichever run comes next
    assert shared.release_run("run-4") == 0  # the run's end spares it: it outlives the run
    assert describe(moved.instance_id)["State"]["Name"] == "running"
    assert shared.ensure(offer(), run_id="run-5", task_name="c").instance_id == first.instance_id
    assert shared.release_run("run-5") == 1  # busy at its run's end: ended with the run
    busy = shared.ensure(offer(), run_id="run-6", task_name="d")
    shared.release(busy)
    assert shared.end_parked() == 1  # what the process's exit does
    assert describe(busy.instance_id)["State"]["Name"] in ("shutting-down", "terminated")


def test_pools_warm_across_runs_are_one_provisioner_per_process(settings: AwsSettings) -> None:
    """A pool block is loaded again by every flow run: only one provisioner keeps the pool."""
    from dataclasses import replace

    from prefect_cloudsched.adapters.provision.factory import build_provisioner

    across = replace(settings, warm_across_runs=True, warm_seconds=30.0, heartbeat_seconds=0)
    assert build_provisioner(across) is build_provisioner(replace(across))
    assert build_provisioner(across) is not build_provisioner(replace(across, owner_id="other"))
    per_run = replace(across, warm_across_runs=False)
    assert build_provisioner(per_run) is not build_provisioner(per_run)


def test_denied_reservations_are_a_warning_naming_the_permission(
    moto: MotoControl, make: Callable[..., AwsProvisioner], caplog: pytest.LogCaptureFixture
) -> None:
    aws = make(reservations={"aws/us-east-1/g5.xlarge": 2})
    moto.inject("UnauthorizedOperation", action="describe_reserved_instances")
    with caplog.at_level("INFO", logger="prefect_cloudsched"):
        assert aws.owned_reservations() == {"aws/us-east-1/g5.xlarge": 2}  # declared ones kept
    [denied] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "ec2:DescribeReservedInstances denied in us-east-1" in denied.getMessage()
    assert "AwsSettings.reservations" in denied.getMessage()
    caplog.clear()
    with caplog.at_level("INFO", logger="prefect_cloudsched"):
        aws.owned_reservations()  # moto does not implement the call: no warning for that
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
