"""End to end: ``executor="dask"`` on instances the real provisioners start in MockClouds.

Why this test exists: ``test_dask_executor.py`` drives the Dask executor with a dict-backed
stand-in provisioner, and ``test_fault_suite.py`` drives the real provisioners with the local
executor. Only together do they prove issue 7: every placement starts an instance through the
real boto3 / google-cloud-compute clients (moto and the fake GCE on loopback), the instance's
boot script is what those SDKs received, a real Dask worker stands in for each instance
(``LocalWorkerLauncher``, named after the instance), each body runs on the worker of its own
placement, a spot reclaim mid-task (the cloud ends the instance *and* its worker vanishes) is
recovered through ``SpotInterrupted`` + retry + re-placement, and nothing is left running.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from prefect_cloudsched.adapters.execute.bootstrap import pool_name, pool_slots
from prefect_cloudsched.core.catalog import Offer, load_catalog
from prefect_cloudsched.testing.clouds import MockClouds

OWNER = "dask-e2e"
CATALOG = load_catalog()

# State shared between the test thread and task bodies. The workers are in-process, so the
# module-level helpers below (pickled by reference) see these very objects.
_CLOUDS: dict[str, MockClouds] = {}
_SEEN: dict[str, list[dict[str, Any]]] = defaultdict(list)
_RECLAIM: queue.Queue[tuple[str, threading.Event]] = queue.Queue()
_RECLAIMED: list[str] = []


def _observe(step: str, *, reclaim_first: bool) -> dict[str, Any]:
    """Record, from inside the body, which worker runs it and what the mock shows for it.

    With ``reclaim_first`` the first attempt asks the test thread to reclaim its instance
    and waits, so the reclaim lands mid-task.
    """
    from distributed import get_worker

    worker = get_worker()
    name = str(worker.name)
    running = _CLOUDS["clouds"].running_instances(owner_id=OWNER)
    mine = [i for i in running if i["instance_id"] == name]
    seen = {
        "worker": name,
        "resources": dict(worker.state.total_resources),
        "nthreads": worker.state.nthreads,
        "instance": mine[0] if mine else None,
        "boot_script": _boot_script(name),
    }
    _SEEN[step].append(seen)
    if reclaim_first and len(_SEEN[step]) == 1:
        released = threading.Event()
        _RECLAIM.put((name, released))
        released.wait(30)  # the worker is gone by then; this result is never delivered
    return seen


def _boot_script(instance_id: str) -> str | None:
    """The boot script the cloud holds for the instance (AWS user-data, GCE metadata)."""
    clouds = _CLOUDS["clouds"]
    region = clouds.moto.launched.get(instance_id)
    if region is not None:  # read back through the EC2 API, as an operator would
        import boto3

        from prefect_cloudsched.testing.aws import DUMMY_KEYS

        ec2 = boto3.client("ec2", region_name=region, endpoint_url=clouds.aws_url, **DUMMY_KEYS)
        answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        encoded = answer.get("UserData", {}).get("Value")
        return base64.b64decode(encoded).decode() if encoded else None
    for vm in clouds.gcp.state.instances(clouds.project):
        if vm["name"] == instance_id:
            items = vm.get("metadata", {}).get("items", [])
            return next((i["value"] for i in items if i["key"] == "startup-script"), None)
    return None


def _reclaimer(clouds: MockClouds, launcher: Any, stop: threading.Event) -> None:
    """Play the cloud: reclaim each instance a body asks for, as a spot reclaim does.

    The cloud ends the instance first (moto: terminated with SpotInstanceTermination; GCE:
    preempted), then its worker vanishes without a goodbye, as it would with the machine.
    """
    while not stop.is_set():
        try:
            name, released = _RECLAIM.get(timeout=0.1)
        except queue.Empty:
            continue
        time.sleep(0.3)  # some paid work is lost with the instance
        clouds.interrupt(name)
        launcher.kill(name)
        _RECLAIMED.append(name)
        released.set()


def _offer_of(row: Any) -> Offer:
    [offer] = [o for o in CATALOG.offers if o.key == row.offer_key and o.gpu_type == row.gpu_type]
    return offer


@pytest.fixture
def clouds(ledger_url: str) -> Iterator[MockClouds]:
    """Fresh mocks per test: moto + fake GCE, instance rows in the test's ledger."""
    with MockClouds(owner_id=OWNER, heartbeat_seconds=0.5, ledger_url=ledger_url) as mc:
        _CLOUDS["clouds"] = mc
        _SEEN.clear()
        _RECLAIMED.clear()
        try:
            yield mc
        finally:
            _CLOUDS.clear()


@pytest.mark.slow
@pytest.mark.harness
def test_dask_workers_on_mocked_instances_run_each_task_and_survive_reclaims(
    prefect_harness: None, clouds: MockClouds, ledger_url: str
) -> None:
    import distributed
    from prefect import flow, task
    from prefect.context import FlowRunContext

    from prefect_cloudsched import CloudSchedTaskRunner, Ledger, requires
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher
    from prefect_cloudsched.adapters.provision.lifecycle import label_value

    launcher = LocalWorkerLauncher()
    spot = {"spot_ok": True, "deadline": timedelta(hours=4)}

    @requires(gpus=1, gpu_type="A10G", **spot)  # A10G: AWS only (g5)
    @task
    def aws_gpu() -> dict[str, Any]:
        return _observe("aws_gpu", reclaim_first=True)

    @requires(gpus=1, gpu_type="P4", **spot)  # P4: GCP only (N1 + guestAccelerators)
    @task
    def gcp_gpu() -> dict[str, Any]:
        return _observe("gcp_gpu", reclaim_first=True)

    @requires(cpus=2, memory_gib=4)
    @task
    def cpu() -> dict[str, Any]:
        return _observe("cpu", reclaim_first=False)

    @flow(
        task_runner=CloudSchedTaskRunner(
            max_workers=4,
            provisioners=clouds.provisioners,
            executor="dask",
            executor_options={
                "launcher": launcher,
                "monitor_interval": 0.1,
                "join_timeout": 30,
                "idle_timeout": 0,  # the instance is gone at release: so is its worker
            },
        )
    )
    def pipeline() -> tuple[str, dict[str, dict[str, Any]]]:
        ctx = FlowRunContext.get()
        assert ctx is not None and ctx.flow_run is not None
        futures = {"aws_gpu": aws_gpu.submit(), "gcp_gpu": gcp_gpu.submit(), "cpu": cpu.submit()}
        return str(ctx.flow_run.id), {step: f.result() for step, f in futures.items()}

    stop = threading.Event()
    thread = threading.Thread(target=_reclaimer, args=(clouds, launcher, stop), daemon=True)
    thread.start()
    try:
        run_id, results = pipeline()
    finally:
        stop.set()
        thread.join(timeout=10)

    # ---- each task ran on the Dask worker of its own placement's instance
    ledger = Ledger(ledger_url)
    rows = ledger.placements(flow_run_id=run_id)
    by_state = {(r.task_name, r.state): r for r in rows}
    assert sorted(by_state) == [
        ("aws_gpu", "completed"),
        ("aws_gpu", "interrupted"),
        ("cpu", "completed"),
        ("gcp_gpu", "completed"),
        ("gcp_gpu", "interrupted"),
    ], [(r.task_name, r.state) for r in rows]
    expected_cloud = {"aws_gpu": "aws", "gcp_gpu": "gcp", "cpu": None}
    pools = set()
    for step, result in results.items():
        row = by_state[step, "completed"]
        offer = _offer_of(row)
        assert result["worker"] == row.instance_id, step  # the worker *is* the instance
        assert result["resources"] == {pool_name(offer): pool_slots(offer)}, step
        assert result["nthreads"] == max(1, pool_slots(offer))
        assert expected_cloud[step] in (None, offer.cloud), (step, offer.key)
        pools.add(pool_name(offer))
    assert len(pools) == 3  # three different pools, three different workers
    assert by_state["aws_gpu", "completed"].gpu_type == "A10G"
    assert by_state["gcp_gpu", "completed"].gpu_type == "P4"
    assert by_state["cpu", "completed"].gpus == 0

    # ---- every instance was started through the mocked SDKs, tagged with owner and run,
    # and was running (with its boot script) while its body ran
    for step, attempts in _SEEN.items():
        for seen in attempts:
            instance = seen["instance"]
            assert instance is not None, (step, seen["worker"])
            assert instance["owner"] == OWNER
            run_label = run_id if instance["cloud"] == "aws" else label_value(run_id)
            assert instance["run"] == run_label
            assert instance["state"] in ("running", "RUNNING")
            script = seen["boot_script"]
            assert script is not None and "-m dask worker" in script, (step, instance)
            # the name the boot script gives its worker is the provisioner's instance id:
            # AWS reads the instance id, GCP the VM name (GcpProvisioner's instance_id)
            if instance["cloud"] == "aws":
                assert seen["worker"].startswith("i-") and "meta-data/instance-id" in script
                assert seen["worker"] in clouds.moto.launched
            else:
                assert "computeMetadata/v1/instance/name" in script
            [pool] = seen["resources"]
            assert f"--resources {pool}={seen['resources'][pool]:g}" in script

    # ---- the reclaims were recovered: SpotInterrupted -> retry -> re-placed elsewhere
    assert len(_SEEN["aws_gpu"]) == 2 and len(_SEEN["gcp_gpu"]) == 2 and len(_SEEN["cpu"]) == 1
    assert sorted(_RECLAIMED) == sorted(clouds.interrupted) and len(_RECLAIMED) == 2
    for step in ("aws_gpu", "gcp_gpu"):
        lost, done = by_state[step, "interrupted"], by_state[step, "completed"]
        assert lost.option == "spot" and lost.instance_id in _RECLAIMED
        assert lost.instance_id == _SEEN[step][0]["worker"]
        assert done.instance_id == _SEEN[step][1]["worker"] != lost.instance_id
        assert done.task_run_id == lost.task_run_id  # one Prefect task run, retried
        assert lost.runtime_s >= 0.3 and lost.wasted_micro == lost.cost_micro > 0
        assert json.loads(done.decision_json)["attempt"] == 2
    losses = ledger.interruptions(flow_run_id=run_id)
    assert sorted(loss["instance_id"] for loss in losses) == sorted(_RECLAIMED)
    assert all("Dask worker" in loss["detail"] for loss in losses)

    # ---- nothing left: no instance of ours, no worker, no monitor thread
    assert clouds.running_instances(owner_id=OWNER) == []
    assert launcher.names == []
    alive = [w for w in list(distributed.Worker._instances) if w.status.name != "closed"]
    assert alive == []
    assert not [t for t in threading.enumerate() if t.name == "cloudsched-dask-monitor"]
    started = {r.instance_id for r in rows}
    assert len(started) == 5  # one instance per attempt, each through the mocked SDKs
    assert {i["instance_id"] for i in ledger.instances(run_id=run_id)} >= started


def _booting_launcher() -> Any:
    """A ``LocalWorkerLauncher`` that boots a worker only on an instance the mock runs.

    ``LocalWorkerLauncher`` starts a worker for any name, so a spot instance reclaimed
    before its worker joined would still get one in tests; on a real cloud it never does.
    """
    from prefect_cloudsched.adapters.execute.bootstrap import WorkerSpec
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher

    class BootingLauncher(LocalWorkerLauncher):
        def launch(self, spec: WorkerSpec) -> None:
            running = _CLOUDS["clouds"].running_instances(owner_id=OWNER)
            if any(i["instance_id"] == spec.name for i in running):
                super().launch(spec)

    return BootingLauncher()


@pytest.mark.slow
@pytest.mark.harness
def test_spot_reclaimed_before_its_worker_joins_is_retried(
    prefect_harness: None, clouds: MockClouds, ledger_url: str
) -> None:
    from prefect import flow, task

    from prefect_cloudsched import CloudSchedTaskRunner, Ledger, requires

    launcher = _booting_launcher()

    @requires(gpus=1, gpu_type="A10G", spot_ok=True, deadline=timedelta(hours=4))
    @task
    def aws_gpu() -> str:
        return _observe("aws_gpu", reclaim_first=False)["worker"]

    @flow(
        task_runner=CloudSchedTaskRunner(
            provisioners=clouds.provisioners,
            executor="dask",
            executor_options={"launcher": launcher, "join_timeout": 2, "monitor_interval": 0.1},
        )
    )
    def pipeline() -> str:
        return aws_gpu.submit().result()

    clouds.interrupt_next_spot(cloud="aws")  # reclaimed right after launch, before boot
    try:
        worker = pipeline()
    finally:
        clouds.disarm()
        assert clouds.running_instances(owner_id=OWNER) == []
        assert launcher.names == []
    rows = Ledger(ledger_url).placements()
    assert [r.state for r in rows] == ["interrupted", "completed"]
    assert rows[0].instance_id in clouds.interrupted and worker == rows[1].instance_id


@pytest.mark.slow
@pytest.mark.harness
def test_a_refused_worker_fails_the_task_with_one_line_and_leaves_nothing_running(
    prefect_harness: None, clouds: MockClouds, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose versions differ from the flow's: one-line error, instance released."""
    from prefect import flow, task

    from prefect_cloudsched import CloudSchedTaskRunner, Ledger, requires
    from prefect_cloudsched.adapters.execute import versions
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher

    flow_side = {**versions.flow_versions(), "python": "3.99"}
    monkeypatch.setattr(versions, "flow_versions", lambda: flow_side)
    launcher = LocalWorkerLauncher()

    @requires(gpus=1, gpu_type="A10G", spot_ok=True, deadline=timedelta(hours=4))
    @task
    def aws_gpu() -> str:
        return "never runs"

    @flow(
        task_runner=CloudSchedTaskRunner(
            provisioners=clouds.provisioners,
            executor="dask",
            executor_options={"launcher": launcher, "tls": True, "monitor_interval": 0.1},
        )
    )
    def pipeline() -> str:
        return aws_gpu.submit().result()

    with pytest.raises(Exception, match=r"^CloudSchedExecutor\.container_image / python: ") as err:
        pipeline()
    assert "\n" not in str(err.value)
    assert clouds.running_instances(owner_id=OWNER) == []
    assert launcher.names == []
    [row] = Ledger(ledger_url).placements()
    assert row.state == "failed" and row.instance_id in clouds.moto.launched
