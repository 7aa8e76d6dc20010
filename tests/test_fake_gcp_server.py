"""The fake GCE server, driven by the real ``google-cloud-compute`` client over loopback HTTP.

One server for the module (starting one is cheap, but the client import is ~0.9 s anyway);
each test starts from ``state.reset()``. No test reaches the network: every client is built
from ``fake.client_kwargs()`` and operations are polled with our own ZoneOperationsClient.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from prefect_cloudsched.testing.gcp_server import FakeGcpCompute, GceError

PROJECT = "demo-project"
ZONE = "us-central1-a"
DONE = compute_v1.Operation.Status.DONE
RUNNING = compute_v1.Operation.Status.RUNNING


@pytest.fixture
def fake(fake_gcp: FakeGcpCompute) -> FakeGcpCompute:
    return fake_gcp


@pytest.fixture
def ic(fake: FakeGcpCompute) -> compute_v1.InstancesClient:
    return compute_v1.InstancesClient(**fake.client_kwargs())


@pytest.fixture
def ops(fake: FakeGcpCompute) -> compute_v1.ZoneOperationsClient:
    return compute_v1.ZoneOperationsClient(**fake.client_kwargs())


def spot_vm(
    name: str, zone: str = ZONE, action: str = "STOP", **labels: str
) -> compute_v1.Instance:
    """What our provisioner sends for a spot GPU VM (see cloud-mocking-notes 2.2)."""
    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/g2-standard-4",
        labels={"cloudsched-run": "r1", **labels},
        metadata=compute_v1.Metadata(
            items=[compute_v1.Items(key="startup-script", value="#!/bin/bash\necho hi")]
        ),
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image="projects/debian-cloud/global/images/family/debian-12",
                    disk_size_gb=50,
                ),
            )
        ],
        network_interfaces=[
            compute_v1.NetworkInterface(
                network="global/networks/default",
                access_configs=[
                    compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")
                ],
            )
        ],
        guest_accelerators=[
            compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/nvidia-l4", accelerator_count=1
            )
        ],
        scheduling=compute_v1.Scheduling(
            provisioning_model="SPOT",
            instance_termination_action=action,
            on_host_maintenance="TERMINATE",
            automatic_restart=False,
        ),
    )


def plain_vm(name: str, machine_type: str = "e2-standard-2", **labels: str) -> compute_v1.Instance:
    return compute_v1.Instance(
        name=name, machine_type=f"zones/{ZONE}/machineTypes/{machine_type}", labels=labels
    )


def insert(ic: compute_v1.InstancesClient, vm: compute_v1.Instance, zone: str = ZONE) -> Any:
    """insert_unary: the raw Operation, no ExtendedOperation polling of the real host."""
    return ic.insert_unary(project=PROJECT, zone=zone, instance_resource=vm)


def hook(fake: FakeGcpCompute, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if data is None else "POST"
    req = urllib.request.Request(f"{fake.url}/_fake/{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_spot_insert_then_get_round_trips_fields(fake: FakeGcpCompute, ic) -> None:
    op = ic.insert(project=PROJECT, zone=ZONE, instance_resource=spot_vm("vm-1"))
    assert op.done() and op.result() is None  # DONE at once: ExtendedOperation never polls

    got = ic.get(project=PROJECT, zone=ZONE, instance="vm-1")
    assert got.status == "RUNNING"
    assert got.scheduling.provisioning_model == "SPOT"
    assert got.scheduling.instance_termination_action == "STOP"
    assert got.labels == {"cloudsched-run": "r1"}
    assert got.metadata.items[0].key == "startup-script"
    assert got.metadata.items[0].value == "#!/bin/bash\necho hi"
    assert got.guest_accelerators[0].accelerator_count == 1
    assert got.guest_accelerators[0].accelerator_type.endswith("/acceleratorTypes/nvidia-l4")
    assert got.machine_type.endswith(f"/zones/{ZONE}/machineTypes/g2-standard-4")
    assert got.disks[0].initialize_params.disk_size_gb == 50
    assert got.self_link.endswith(f"/projects/{PROJECT}/zones/{ZONE}/instances/vm-1")
    assert got.id > 0 and got.creation_timestamp
    assert got.network_interfaces[0].access_configs[0].nat_i_p
    # int64 fields travel as JSON strings, both ways
    sent = next(r for r in fake.state.requests if r.method == "POST")
    assert sent.body["disks"][0]["initializeParams"]["diskSizeGb"] == "50"
    assert isinstance(fake.state.instances()[0]["id"], str)


def test_list_filters_by_label_and_status_and_pages(fake: FakeGcpCompute, ic) -> None:
    for i in range(5):
        insert(ic, plain_vm(f"vm-{i}", team="a" if i % 2 == 0 else "b"))
    ic.stop(project=PROJECT, zone=ZONE, instance="vm-4").result()

    def names(flt: str, **kw: Any) -> list[str]:
        req = compute_v1.ListInstancesRequest(project=PROJECT, zone=ZONE, filter=flt, **kw)
        return [i.name for i in ic.list(request=req)]

    assert names('labels.team = "a"') == ["vm-0", "vm-2", "vm-4"]
    assert names('labels.team="a" AND status=RUNNING') == ["vm-0", "vm-2"]
    assert names('(labels.team = "a") (status != RUNNING)') == ["vm-4"]
    assert names("name eq 'vm-[13]'") == ["vm-1", "vm-3"]
    assert names("labels.team:*") == [f"vm-{i}" for i in range(5)]
    assert names('labels.team = "zzz"') == []

    before = len(fake.state.requests)
    assert names("", max_results=2) == [f"vm-{i}" for i in range(5)]
    pages = [r for r in fake.state.requests[before:] if r.method == "GET"]
    assert len(pages) == 3 and "pageToken" in pages[-1].query

    with pytest.raises(gexc.BadRequest, match="only AND"):
        names('labels.team = "a" OR labels.team = "b"')


def test_empty_list_omits_items_like_gce(fake: FakeGcpCompute, ic) -> None:
    with urllib.request.urlopen(
        f"{fake.url}/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances", timeout=5
    ) as resp:
        assert json.loads(resp.read()) == {"kind": "compute#instanceList"}
    assert list(ic.list(project=PROJECT, zone=ZONE)) == []


def test_aggregated_list_spans_zones(ic) -> None:
    insert(ic, plain_vm("vm-a", run="r9"))
    insert(ic, spot_vm("vm-b", zone="europe-west4-b", run="r9"), zone="europe-west4-b")
    insert(ic, plain_vm("vm-c", run="other"))
    req = compute_v1.AggregatedListInstancesRequest(project=PROJECT, filter='labels.run = "r9"')
    found = {zone: [i.name for i in scoped.instances] for zone, scoped in ic.aggregated_list(req)}
    assert found == {"zones/europe-west4-b": ["vm-b"], f"zones/{ZONE}": ["vm-a"]}


def test_delete_then_get_is_not_found(ic) -> None:
    insert(ic, plain_vm("vm-1"))
    assert ic.delete(project=PROJECT, zone=ZONE, instance="vm-1").result() is None
    with pytest.raises(gexc.NotFound, match="instances/vm-1' was not found"):
        ic.get(project=PROJECT, zone=ZONE, instance="vm-1")
    with pytest.raises(gexc.NotFound):
        ic.delete(project=PROJECT, zone=ZONE, instance="vm-1")


def test_duplicate_name_conflicts_and_keep_alive_survives(ic) -> None:
    insert(ic, plain_vm("vm-1"))
    with pytest.raises(gexc.Conflict, match="already exists") as info:
        insert(ic, plain_vm("vm-1"))
    assert info.value.errors[0]["reason"] == "alreadyExists"
    # the same pooled connection still works after an error answer to a request with a body
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-1").name == "vm-1"


def test_request_validation_errors(fake: FakeGcpCompute, ic) -> None:
    with pytest.raises(gexc.BadRequest, match="field 'zone'"):
        ic.get(project=PROJECT, zone="us-central1-z", instance="x")
    with pytest.raises(gexc.BadRequest, match=r"field 'resource\.machineType'"):
        insert(ic, plain_vm("vm-1", machine_type="n9-giant-4"))
    with pytest.raises(gexc.BadRequest, match=r"field 'resource\.name'"):
        insert(ic, plain_vm("Bad_Name"))
    with pytest.raises(gexc.BadRequest, match=r"field 'resource\.labels'"):
        insert(ic, plain_vm("vm-1", Team="x"))
    gpu_migrating = spot_vm("vm-1")
    gpu_migrating.scheduling.on_host_maintenance = "MIGRATE"
    with pytest.raises(gexc.BadRequest, match="onHostMaintenance"):
        insert(ic, gpu_migrating)
    assert fake.state.instances() == []


def test_unknown_image_fails_the_operation_until_registered(fake: FakeGcpCompute, ic) -> None:
    image = "projects/acme/global/images/family/trainer"
    vm = spot_vm("vm-1")
    vm.disks[0].initialize_params.source_image = image
    op = insert(ic, vm)
    assert op.status == DONE and op.http_error_status_code == 404
    assert op.error.errors[0].code == "RESOURCE_NOT_FOUND" and image in op.error.errors[0].message
    assert fake.state.instances() == []

    fake.state.add_image(f"https://www.googleapis.com/compute/v1/{image}")
    assert not insert(ic, vm).error.errors


def test_stockout_fails_the_insert_operation(fake: FakeGcpCompute, ic, ops) -> None:
    fake.state.stockout_next(zone=ZONE, machine_type="g2-standard-4")
    insert(ic, plain_vm("vm-cpu"))  # another machine type: not affected

    op = ic.insert(project=PROJECT, zone=ZONE, instance_resource=spot_vm("vm-1"))
    with pytest.raises(gexc.ServiceUnavailable, match="ZONE_RESOURCE_POOL_EXHAUSTED"):
        op.result()
    polled = ops.get(project=PROJECT, zone=ZONE, operation=op.name)
    assert polled.status == DONE and polled.http_error_status_code == 503
    err = polled.error.errors[0]
    assert err.code == "ZONE_RESOURCE_POOL_EXHAUSTED" and f"zones/{ZONE}'" in err.message
    assert [i["name"] for i in fake.state.instances()] == ["vm-cpu"]
    assert not insert(ic, spot_vm("vm-2")).error.errors  # count=1 was consumed


def test_quota_error_names_the_quota(fake: FakeGcpCompute, ic) -> None:
    fake.state.quota_next()
    op = ic.insert(project=PROJECT, zone=ZONE, instance_resource=spot_vm("vm-1"))
    with pytest.raises(gexc.Forbidden) as info:
        op.result()
    assert "Quota 'PREEMPTIBLE_NVIDIA_L4_GPUS' exceeded. Limit: 0.0 in region us-central1." in str(
        info.value
    )
    err = op.error.errors[0]
    assert err.code == "QUOTA_EXCEEDED" and op.http_error_status_code == 403
    assert err.error_details[0].quota_info.dimensions == {"region": "us-central1"}

    fake.state.quota_next(quota="CPUS", limit=24)
    assert (
        "Quota 'CPUS' exceeded. Limit: 24.0" in insert(ic, plain_vm("vm-2")).error.errors[0].message
    )


def test_fail_next_injects_http_errors(fake: FakeGcpCompute, ic) -> None:
    fake.state.fail_next(429, "rateLimitExceeded", "Rate Limit Exceeded", method="insert")
    assert list(ic.list(project=PROJECT, zone=ZONE)) == []  # other methods unaffected
    with pytest.raises(gexc.TooManyRequests, match="Rate Limit Exceeded") as info:
        insert(ic, plain_vm("vm-1"))
    assert info.value.errors[0]["reason"] == "rateLimitExceeded"
    assert not insert(ic, plain_vm("vm-1")).error.errors

    fake.state.fail_next(403, "QUOTA_EXCEEDED", "Quota exceeded for quota metric 'CPUS'", count=2)
    for _ in range(2):
        with pytest.raises(gexc.Forbidden) as forbidden:
            ic.get(project=PROJECT, zone=ZONE, instance="vm-1")
        assert forbidden.value.errors[0]["reason"] == "QUOTA_EXCEEDED"
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-1").status == "RUNNING"


def test_preemption_terminates_and_records_operation(fake: FakeGcpCompute, ic, ops) -> None:
    insert(ic, spot_vm("vm-stop", action="STOP"))
    insert(ic, spot_vm("vm-del", action="DELETE"))
    insert(ic, plain_vm("vm-std"))

    fake.state.preempt(PROJECT, ZONE, "vm-stop")
    ic.simulate_maintenance_event(project=PROJECT, zone=ZONE, instance="vm-del").result()

    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-stop").status == "TERMINATED"
    with pytest.raises(gexc.NotFound):
        ic.get(project=PROJECT, zone=ZONE, instance="vm-del")
    req = compute_v1.ListZoneOperationsRequest(
        project=PROJECT, zone=ZONE, filter='operationType="compute.instances.preempted"'
    )
    preempted = list(ops.list(request=req))
    assert sorted(o.target_link.rsplit("/", 1)[-1] for o in preempted) == ["vm-del", "vm-stop"]
    assert all(o.status == DONE for o in preempted)

    with pytest.raises(GceError, match="not a spot VM"):
        fake.state.preempt(PROJECT, ZONE, "vm-std")
    with pytest.raises(GceError, match="not a running spot VM"):
        fake.state.preempt(PROJECT, ZONE, "vm-stop")
    ic.start(project=PROJECT, zone=ZONE, instance="vm-stop").result()
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-stop").status == "RUNNING"


def test_operations_stay_running_for_n_polls(fake: FakeGcpCompute, ic, ops) -> None:
    fake.state.op_polls_before_done = 2
    op = insert(ic, spot_vm("vm-1"))
    assert op.status == RUNNING
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-1").status == "PROVISIONING"

    seen = []
    while True:  # our own polling loop: never ExtendedOperation.result() against the real host
        polled = ops.wait(project=PROJECT, zone=ZONE, operation=op.name)
        seen.append(polled.status)
        if polled.status == DONE:
            break
    assert seen == [RUNNING, RUNNING, DONE]
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-1").status == "RUNNING"

    stop = ic.stop_unary(project=PROJECT, zone=ZONE, instance="vm-1")
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-1").status == "STOPPING"
    statuses = [ops.get(project=PROJECT, zone=ZONE, operation=stop.name).status for _ in range(3)]
    assert statuses == [RUNNING, RUNNING, DONE]
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-1").status == "TERMINATED"
    with pytest.raises(gexc.NotFound):
        ops.get(project=PROJECT, zone=ZONE, operation="operation-missing")


def test_set_labels_needs_current_fingerprint(ic) -> None:
    insert(ic, plain_vm("vm-1", team="a"))
    current = ic.get(project=PROJECT, zone=ZONE, instance="vm-1")

    def set_labels(fingerprint: str) -> None:
        body = compute_v1.InstancesSetLabelsRequest(
            labels={"team": "b", "cloudsched-heartbeat": "1700000000"},
            label_fingerprint=fingerprint,
        )
        ic.set_labels(
            project=PROJECT, zone=ZONE, instance="vm-1", instances_set_labels_request_resource=body
        ).result()

    set_labels(current.label_fingerprint)
    assert ic.get(project=PROJECT, zone=ZONE, instance="vm-1").labels["team"] == "b"
    with pytest.raises(gexc.PreconditionFailed):
        set_labels(current.label_fingerprint)  # stale now


def test_machine_types(fake: FakeGcpCompute) -> None:
    mt = compute_v1.MachineTypesClient(**fake.client_kwargs())
    g2 = mt.get(project=PROJECT, zone=ZONE, machine_type="g2-standard-4")
    assert (g2.guest_cpus, g2.memory_mb) == (4, 16384)
    assert g2.accelerators[0].guest_accelerator_type == "nvidia-l4"
    n1 = mt.get(project=PROJECT, zone=ZONE, machine_type="n1-standard-4")
    assert (n1.guest_cpus, n1.memory_mb, list(n1.accelerators)) == (4, 15360, [])
    names = {m.name for m in mt.list(project=PROJECT, zone=ZONE)}
    assert {"a2-highgpu-8g", "a3-highgpu-1g", "e2-standard-8", "n2-standard-8"} <= names
    with pytest.raises(gexc.NotFound, match="machineTypes/n9-giant-4"):
        mt.get(project=PROJECT, zone=ZONE, machine_type="n9-giant-4")


def test_http_hooks_drive_the_fake(fake: FakeGcpCompute, ic, ops) -> None:
    hook(fake, "stockout", {"count": 1, "zone": ZONE})
    assert insert(ic, spot_vm("vm-0")).error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    hook(fake, "quota", {"quota": "NVIDIA_L4_GPUS", "limit": 1})
    assert insert(ic, spot_vm("vm-0")).error.errors[0].code == "QUOTA_EXCEEDED"

    insert(ic, spot_vm("vm-1"))
    op = hook(fake, "preempt", {"project": PROJECT, "zone": ZONE, "name": "vm-1"})
    assert op["operationType"] == "compute.instances.preempted"
    items = hook(fake, "instances")["items"]
    assert [(i["name"], i["status"]) for i in items] == [("vm-1", "TERMINATED")]

    hook(fake, "fail", {"status": 503, "reason": "backendError", "method": "instances.delete"})
    with pytest.raises(gexc.ServiceUnavailable):
        ic.delete_unary(project=PROJECT, zone=ZONE, instance="vm-1")

    hook(fake, "config", {"op_polls_before_done": 1})
    assert ic.delete_unary(project=PROJECT, zone=ZONE, instance="vm-1").status == RUNNING
    assert any(r["method"] == "DELETE" for r in hook(fake, "requests")["items"])

    with pytest.raises(urllib.error.HTTPError) as bad:
        hook(fake, "preempt", {"project": PROJECT, "zone": ZONE, "name": "nope"})
    assert bad.value.code == 404
    for name, bad_args in [("stockout", {"bogus": 1}), ("fail", {"status": 200})]:
        with pytest.raises(urllib.error.HTTPError) as bad:
            hook(fake, name, bad_args)
        assert bad.value.code == 400

    hook(fake, "reset", {})
    assert hook(fake, "instances") == {"items": []}
    assert fake.state.op_polls_before_done == 0


def test_unparseable_body_and_unknown_route_keep_connection_usable(fake: FakeGcpCompute) -> None:
    host, port = fake.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances", b"{nope")
        resp = conn.getresponse()
        assert resp.status == 400 and json.loads(resp.read())["error"]["code"] == 400
        conn.request("GET", f"/compute/v1/projects/{PROJECT}/global/networks", b"x" * 1000)
        resp = conn.getresponse()
        assert resp.status == 501 and b"does not implement" in resp.read()
        conn.request("GET", "/_fake/instances")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_standalone_module_serves_until_terminated() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect_cloudsched.testing.gcp_server", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/_fake/instances", timeout=5) as resp:
            assert json.loads(resp.read()) == {"items": []}
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
