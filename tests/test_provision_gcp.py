"""GCP provisioner against the fake GCE server (real ``google-cloud-compute`` client, loopback).

One fake per module; each test starts from ``state.reset()``. Every client is built from the
fake's URL and operations are polled with our own ZoneOperationsClient, so nothing can reach
``compute.googleapis.com``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_cloudsched.adapters.provision.base import (
    HEARTBEAT_TAG,
    OWNER_TAG,
    RUN_TAG,
    TASK_TAG,
    Provisioner,
)
from prefect_cloudsched.adapters.provision.factory import build_provisioner
from prefect_cloudsched.adapters.provision.gcp import GcpProvisioner, GcpSettings
from prefect_cloudsched.adapters.provision.images import GCP_CPU_IMAGE, GCP_GPU_IMAGE
from prefect_cloudsched.adapters.provision.lifecycle import label_value
from prefect_cloudsched.core.catalog import Offer, PurchaseOption, load_catalog
from prefect_cloudsched.errors import CapacityError, ProvisioningError, SpotInterrupted
from prefect_cloudsched.testing.gcp_server import FakeGcpCompute
from prefect_cloudsched.testing.offers import shipped_offer
from prefect_cloudsched.testing.provisioners import FAST_BACKOFF, assert_launch_marks

PROJECT = "demo-project"
ZONE = "us-central1-a"
RUN = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"


def offer(instance_type: str = "g2-standard-4", option: str = "spot", zone: str = ZONE) -> Offer:
    return shipped_offer("gcp", instance_type, option, zone)


@pytest.fixture
def fake(fake_gcp: FakeGcpCompute) -> FakeGcpCompute:
    fake_gcp.state.add_image(GCP_GPU_IMAGE)  # the default image of GPU shapes
    return fake_gcp


@pytest.fixture
def make(fake: FakeGcpCompute, tmp_path: Path) -> Callable[..., GcpProvisioner]:
    base = GcpSettings(
        project=PROJECT,
        zones=(ZONE, "us-central1-b"),
        endpoint=fake.url,
        owner_id="tester",
        poll_seconds=0.01,
        backoff=FAST_BACKOFF,
        heartbeat_seconds=0,
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
    )

    def factory(**changes: object) -> GcpProvisioner:
        return GcpProvisioner(replace(base, **changes))

    return factory


def vms(fake: FakeGcpCompute) -> list[dict]:
    return fake.state.instances(PROJECT)


def inserts(fake: FakeGcpCompute) -> list[dict]:
    return [
        r.body for r in fake.state.requests if r.method == "POST" and r.path.endswith("/instances")
    ]


def test_factory_and_protocol(make: Callable[..., GcpProvisioner]) -> None:
    provisioner = build_provisioner(make().settings)
    assert isinstance(provisioner, GcpProvisioner) and isinstance(provisioner, Provisioner)


def test_spot_vm_body_labels_and_startup_script(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    handle = make().ensure(offer(), run_id=RUN, task_name="Train Model", startup_script="echo hi")
    [vm] = vms(fake)
    assert vm["name"] == handle.instance_id and vm["status"] == "RUNNING"
    assert vm["scheduling"]["provisioningModel"] == "SPOT"
    assert vm["scheduling"]["instanceTerminationAction"] == "DELETE"
    assert vm["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert vm["machineType"].endswith(f"zones/{ZONE}/machineTypes/g2-standard-4")
    assert "guestAccelerators" not in vm  # G2 has its L4 built in
    labels = vm["labels"]
    assert_launch_marks(
        labels, owner="tester", run=RUN, task=label_value("Train Model"), option="spot"
    )
    assert vm["disks"][0]["initializeParams"]["labels"][OWNER_TAG] == "tester"
    assert vm["metadata"]["items"] == [
        {"key": "startup-script", "value": "echo hi"},
        {"key": "install-nvidia-driver", "value": "True"},
    ]
    assert vm["disks"][0]["initializeParams"]["sourceImage"] == GCP_GPU_IMAGE
    [request] = [r for r in fake.state.requests if r.path.endswith("/instances")]
    assert re.fullmatch(r"[0-9a-f-]{36}", request.query["requestId"])
    assert handle.zone == ZONE and handle.region == "us-central1"


def test_n1_gpu_gets_a_guest_accelerator(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    t4 = next(
        o
        for o in load_catalog().offers
        if o.cloud == "gcp"
        and o.zone == ZONE
        and o.instance_type.startswith("n1-")
        and o.gpu_type == "T4"
        and o.option is PurchaseOption.ON_DEMAND
    )
    make().ensure(t4, run_id=RUN, task_name="t")
    [vm] = vms(fake)
    [accelerator] = vm["guestAccelerators"]
    assert accelerator["acceleratorType"].endswith("acceleratorTypes/nvidia-tesla-t4")
    assert accelerator["acceleratorCount"] == t4.gpu_count
    assert vm["scheduling"]["onHostMaintenance"] == "TERMINATE"  # GPUs cannot live-migrate
    assert vm["scheduling"].get("provisioningModel", "STANDARD") == "STANDARD"


def test_preemption_is_a_spot_interruption(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    gcp = make()
    handle = gcp.ensure(offer(), run_id=RUN, task_name="t")
    gcp.check(handle)
    fake.state.preempt(PROJECT, ZONE, handle.instance_id)
    with pytest.raises(SpotInterrupted) as caught:
        gcp.check(handle)
    assert caught.value.instance_id == handle.instance_id
    gcp.release(handle)
    assert vms(fake) == []


def test_preempted_and_stopped_vm_is_deleted(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    gcp = make(spot_termination_action="STOP")
    handle = gcp.ensure(offer(), run_id=RUN, task_name="t")
    fake.state.preempt(PROJECT, ZONE, handle.instance_id)
    assert vms(fake)[0]["status"] == "TERMINATED"
    with pytest.raises(SpotInterrupted):
        gcp.check(handle)
    assert vms(fake) == []  # a stopped VM still bills its disk: we delete it


def test_standard_vm_ended_by_someone_else(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    gcp = make()
    handle = gcp.ensure(offer(option="on-demand"), run_id=RUN, task_name="t")
    from google.cloud import compute_v1

    compute_v1.InstancesClient(**fake.client_kwargs()).delete_unary(
        project=PROJECT, zone=ZONE, instance=handle.instance_id
    )
    with pytest.raises(ProvisioningError, match="ended without us"):
        gcp.check(handle)


def test_slow_operations_are_polled_with_our_own_client(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    fake.state.op_polls_before_done = 3
    gcp = make()
    handle = gcp.ensure(offer(option="on-demand"), run_id=RUN, task_name="t")
    assert vms(fake)[0]["status"] == "RUNNING"
    waits = [r for r in fake.state.requests if r.path.endswith("/wait")]
    assert len(waits) >= 3
    gcp.release(handle)
    assert vms(fake) == []  # release waited for the delete operation


@pytest.mark.parametrize("inject", ["stockout", "quota", "quota-http", "throttled"])
def test_capacity_refusals(
    inject: str, fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    if inject == "stockout":
        fake.state.stockout_next(zone=ZONE)
        code = "ZONE_RESOURCE_POOL_EXHAUSTED"
    elif inject == "quota":
        fake.state.quota_next()
        code = "QUOTA_EXCEEDED"
    elif inject == "quota-http":
        fake.state.fail_next(403, "QUOTA_EXCEEDED", "Quota 'CPUS' exceeded.", method="insert")
        code = "QUOTA_EXCEEDED"
    else:
        fake.state.fail_next(429, "rateLimitExceeded", count=FAST_BACKOFF.attempts, method="insert")
        code = "rateLimitExceeded"
    gcp = make()
    with pytest.raises(CapacityError) as caught:
        gcp.ensure(offer(), run_id=RUN, task_name="t")
    assert caught.value.code == code and caught.value.offer_key == offer().key
    assert vms(fake) == []
    gcp.ensure(offer(), run_id=RUN, task_name="t")  # the next try goes through
    assert len(vms(fake)) == 1


def test_throttling_is_retried_with_one_request_id(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    fake.state.fail_next(429, "rateLimitExceeded", count=2, method="insert")
    make().ensure(offer(), run_id=RUN, task_name="t")
    sent = [r for r in fake.state.requests if r.path.endswith("/instances") and r.method == "POST"]
    assert len(sent) == 3 and len({r.query["requestId"] for r in sent}) == 1
    assert len(vms(fake)) == 1


def test_same_task_name_twice_and_a_restarted_process(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    first_process = make()
    a = first_process.ensure(offer(), run_id=RUN, task_name="train")
    b = first_process.ensure(offer(), run_id=RUN, task_name="train")  # mapped: same name
    assert a.instance_id != b.instance_id
    first_process.release(a)
    restarted = make()  # same run, sequence starts over: a's request id is answered again
    c = restarted.ensure(offer(), run_id=RUN, task_name="train")
    assert c.instance_id == b.instance_id  # b still runs: ours, same run, adopted
    d = restarted.ensure(offer(), run_id=RUN, task_name="train")
    assert d.instance_id not in (a.instance_id, b.instance_id)
    assert {vm["name"] for vm in vms(fake)} == {b.instance_id, d.instance_id}


def test_release_run_touches_only_ours(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    gcp = make()
    mine = gcp.ensure(offer(), run_id=RUN, task_name="t")
    other_zone = gcp.ensure(offer(zone="us-central1-b"), run_id=RUN, task_name="t")
    other_run = gcp.ensure(offer(), run_id="another-run", task_name="t")
    fake.insert_foreign_instance(
        PROJECT, ZONE, "foreign-a", {OWNER_TAG: "someone-else", RUN_TAG: RUN}
    )
    fake.insert_foreign_instance(PROJECT, ZONE, "foreign-b", {})
    assert gcp.release_run(RUN) == 2
    left = {vm["name"] for vm in vms(fake)}
    assert left == {other_run.instance_id, "foreign-a", "foreign-b"}
    assert mine.instance_id not in left and other_zone.instance_id not in left
    assert [o.instance_id for o in gcp.list_owned()] == [other_run.instance_id]


def test_bad_settings_are_one_line_provisioning_errors(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    cpu = offer("e2-standard-4", "on-demand")
    with pytest.raises(ProvisioningError, match=r"GcpSettings\.image"):
        make(image="projects/nope/global/images/missing").ensure(cpu, run_id=RUN, task_name="t")
    fake.state.fail_next(
        404,
        "notFound",
        "The resource 'projects/p/global/networks/nope' was not found",
        method="insert",
    )
    with pytest.raises(ProvisioningError, match=r"GcpSettings\.network"):
        make(network="global/networks/nope").ensure(offer(), run_id=RUN, task_name="t")
    fake.state.fail_next(403, "forbidden", "Required 'compute.instances.create' permission")
    with pytest.raises(ProvisioningError, match="refused permission"):
        make().ensure(offer(), run_id=RUN, task_name="t")
    with pytest.raises(ProvisioningError, match=r"GcpSettings\.zones: 'central'"):
        make(zones=("central",))
    with pytest.raises(ProvisioningError, match=r"GcpSettings\.service_account_info"):
        make(service_account_info="{not json").ensure(offer(), run_id=RUN, task_name="t")
    with pytest.raises(ProvisioningError, match="spot_termination_action"):
        make(spot_termination_action="HIBERNATE")
    assert vms(fake) == []


def test_secret_never_in_repr(make: Callable[..., GcpProvisioner]) -> None:
    gcp = make(service_account_info='{"private_key": "hunter2"}')
    assert "hunter2" not in repr(gcp.settings) and "hunter2" not in repr(gcp)


def test_offer_outside_the_pool_is_refused_as_capacity(
    make: Callable[..., GcpProvisioner],
) -> None:
    with pytest.raises(CapacityError, match="ZoneNotInPool"):
        make().ensure(offer(zone="europe-west4-a"), run_id=RUN, task_name="t")


def test_heartbeat_label_is_refreshed(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    gcp = make(heartbeat_seconds=0.05)
    handle = gcp.ensure(offer(), run_id=RUN, task_name="t")
    first = int(vms(fake)[0]["labels"][HEARTBEAT_TAG])
    deadline = time.time() + 5
    while time.time() < deadline:
        time.sleep(0.1)
        setlabels = [r for r in fake.state.requests if r.path.endswith("/setLabels")]
        if setlabels:
            break
    assert setlabels and int(vms(fake)[0]["labels"][HEARTBEAT_TAG]) >= first
    gcp.release(handle)


def test_warm_pool_reuses_within_the_run(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    gcp = make(warm_seconds=30)
    first = gcp.ensure(offer(), run_id=RUN, task_name="a")
    gcp.release(first)
    assert len(vms(fake)) == 1
    again = gcp.ensure(offer(), run_id=RUN, task_name="b")
    assert again.instance_id == first.instance_id
    assert vms(fake)[0]["labels"][TASK_TAG] == "b"
    assert gcp.release_run(RUN) == 1 and vms(fake) == []


def test_a_label_change_raced_by_another_writer_is_read_again_and_merged(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    """Reusing a warm VM relabels it while the heartbeat thread may stamp it: GCE refuses
    the second write's stale fingerprint (412). It used to fail the task (seen in CI)."""
    gcp = make()
    handle = gcp.ensure(offer(), run_id=RUN, task_name="a")
    stale = gcp._get(handle)  # read before the heartbeat's write
    gcp._set_labels(handle, gcp._get(handle), {HEARTBEAT_TAG: "1"})
    gcp._set_labels(handle, stale, {TASK_TAG: "b"})
    labels = vms(fake)[0]["labels"]
    assert labels[TASK_TAG] == "b" and labels[HEARTBEAT_TAG] == "1"  # both writes kept
    gcp.release(handle)


def test_a_vm_warm_across_runs_outlives_its_run(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    gcp = make(warm_seconds=30, warm_across_runs=True)
    first = gcp.ensure(offer(), run_id="run-a", task_name="a")
    gcp.release(first)
    assert gcp.release_run("run-a") == 0 and len(vms(fake)) == 1  # parked: spared
    again = gcp.ensure(offer(), run_id="run-b", task_name="b")
    assert again.instance_id == first.instance_id
    gcp.release(again)
    assert gcp.end_parked() == 1 and vms(fake) == []


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120))
def test_label_values_are_valid_and_deterministic(text: str) -> None:
    value = label_value(text)
    assert re.fullmatch(r"[a-z0-9_-]{0,63}", value)
    assert value == label_value(text)


def test_distinct_texts_keep_distinct_labels() -> None:
    assert label_value("Run-1") != label_value("run-1")
    assert label_value("x" * 80) != label_value("x" * 81)
    assert label_value("plain-run-id") == "plain-run-id"


def test_cpu_shapes_boot_debian_gpu_shapes_the_driver_image(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    make().ensure(offer("e2-standard-4", "on-demand"), run_id=RUN, task_name="prep")
    [vm] = vms(fake)
    assert vm["disks"][0]["initializeParams"]["sourceImage"] == GCP_CPU_IMAGE
    assert "metadata" not in vm or all(
        item["key"] != "install-nvidia-driver" for item in vm["metadata"]["items"]
    )


def test_missing_gpu_image_names_the_setting_and_leaves_nothing(
    fake: FakeGcpCompute, make: Callable[..., GcpProvisioner]
) -> None:
    missing = "projects/deeplearning-platform-release/global/images/family/no-such-family"
    with pytest.raises(ProvisioningError, match=r"^GcpSettings\.gpu_image: .*no-such-family"):
        make(gpu_image=missing).ensure(offer(), run_id=RUN, task_name="t")
    assert vms(fake) == []


def test_the_protocol_declares_reservations_and_prices(
    make: Callable[..., GcpProvisioner],
) -> None:
    gcp = make(reservations={"gcp/us-central1-a/g2-standard-4": 1})
    assert gcp.owned_reservations() == {"gcp/us-central1-a/g2-standard-4": 1}
    assert gcp.spot_prices("us-central1", ["g2-standard-4"]) == {}
    assert {"owned_reservations", "spot_prices"} <= set(dir(Provisioner))
