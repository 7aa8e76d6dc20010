"""DaskExecutor: bodies run on the worker of their placement's instance; lost workers retry.

Pure tests check boot scripts and configuration. ``slow`` tests start a real in-process
scheduler and real workers (one per mocked instance, through ``LocalWorkerLauncher``).
"""

from __future__ import annotations

import functools
import os
import queue
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import cloudpickle
import pytest

from prefect_cloudsched.adapters.execute.base import Placement
from prefect_cloudsched.adapters.execute.bootstrap import (
    BootstrapConfig,
    WorkerSpec,
    pool_name,
    pool_slots,
    slots_needed,
    startup_script,
    worker_requirements,
)
from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.catalog import Offer, PurchaseOption, load_catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import PlacementState, PolicyConfig, decide
from prefect_cloudsched.errors import ProvisioningError, SpotInterrupted
from prefect_cloudsched.testing.provisioners import RecordingProvisioner

CATALOG = load_catalog()


def _offer(cloud: str, gpu_type: str | None, option: PurchaseOption) -> Offer:
    return next(
        o
        for o in CATALOG.offers
        if o.cloud == cloud and o.gpu_type == gpu_type and o.option is option
    )


def _placement(needs: TaskNeeds, instance_id: str | None, attempt: int = 1) -> Placement:
    now = datetime.now(UTC)
    decision = decide(
        needs, CATALOG, now=now, submitted_at=now, state=PlacementState(), config=PolicyConfig()
    )
    return Placement(decision, "run-1", f"task-{instance_id}", attempt, instance_id)


def _handle(placement: Placement) -> InstanceHandle:
    offer = placement.decision.offer
    assert placement.instance_id is not None
    return InstanceHandle(
        offer.cloud,
        placement.instance_id,
        offer.key,
        offer.region,
        offer.zone,
        offer.option.value,
        placement.run_id,
    )


# ---------------------------------------------------------------------- boot scripts (pure)
def test_pool_names_are_sanitised_and_distinguish_purchase_options() -> None:
    spot = _offer("aws", "A10G", PurchaseOption.SPOT)
    on_demand = next(
        o
        for o in CATALOG.offers
        if o.capacity_key == spot.capacity_key and o.option is PurchaseOption.ON_DEMAND
    )
    assert pool_name(spot) != pool_name(on_demand)
    n1 = [
        o
        for o in CATALOG.offers
        if (o.cloud, o.location, o.instance_type, o.option)
        == ("gcp", "us-central1-a", "n1-highmem-4", PurchaseOption.SPOT)
    ]
    assert len(n1) > 1 and len({pool_name(o) for o in n1}) == len(n1)  # GPU variants differ
    for name in (pool_name(spot), pool_name(on_demand)):
        assert name.startswith("pool-aws-")
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-")
        assert spot.instance_type.lower() in name
    assert pool_slots(spot) == spot.gpu_count
    cpu = _offer("gcp", None, PurchaseOption.ON_DEMAND)
    assert pool_slots(cpu) == cpu.vcpus


def test_slots_needed_never_exceed_one_instance() -> None:
    gpu = next(o for o in CATALOG.offers if o.gpu_count >= 4)
    cpu = next(o for o in CATALOG.offers if o.gpu_count == 0 and o.vcpus == 2)
    assert slots_needed(TaskNeeds(gpus=2), gpu) == 2
    assert slots_needed(TaskNeeds(cpus=8), gpu) == 1  # a CPU task holds one GPU slot
    assert slots_needed(TaskNeeds(cpus=1.5), cpu) == 1.5
    assert slots_needed(TaskNeeds(cpus=16), cpu) == 2


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_startup_script_is_valid_bash_and_starts_the_pool_worker(cloud: str) -> None:
    offer = _offer(cloud, "T4", PurchaseOption.SPOT)
    script = startup_script(
        offer,
        scheduler_address="tls://10.0.0.5:8786",
        run_id="run-42",
        config=BootstrapConfig(packages=("torch==2.5.1",), extra_env={"HF_HOME": "/mnt/hf"}),
        extra_worker_args=("--tls-ca-file", "/etc/dask/ca.pem"),
    )
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    assert script.startswith("#!/bin/bash\n")
    worker_line = next(line for line in script.splitlines() if "-m dask worker" in line)
    assert "tls://10.0.0.5:8786" in worker_line
    assert f"--resources {pool_name(offer)}={pool_slots(offer)}" in worker_line
    assert '--name "$WORKER_NAME"' in worker_line
    assert "--tls-ca-file /etc/dask/ca.pem" in worker_line
    for requirement in [*worker_requirements(), "torch==2.5.1"]:
        assert requirement in script
    assert "export HF_HOME=/mnt/hf" in script
    assert ("169.254.169.254" in script) == (cloud == "aws")
    assert ("metadata.google.internal" in script) == (cloud == "gcp")
    assert script.rstrip().endswith("shutdown -h now")


def test_startup_script_without_install_and_power_off() -> None:
    offer = _offer("aws", None, PurchaseOption.ON_DEMAND)
    script = startup_script(
        offer,
        scheduler_address="tcp://h:8786",
        run_id="r",
        config=BootstrapConfig(install=False, power_off_on_exit=False, python="/opt/py/bin/python"),
    )
    assert "pip install" not in script and "shutdown" not in script
    assert "PY=/opt/py/bin/python" in script
    with pytest.raises(ValueError, match="no worker bootstrap"):
        startup_script(
            Offer("azure", "eastus", None, "D2", 2, 8.0, None, 0, PurchaseOption.SPOT, 0.1, 0.2),
            scheduler_address="tcp://h:8786",
            run_id="r",
        )


# ---------------------------------------------------------------------- configuration (pure)
def test_executor_configuration_validates_compares_and_pickles() -> None:
    from prefect_cloudsched import CloudSchedTaskRunner
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher

    executor = DaskExecutor(launcher=LocalWorkerLauncher(), idle_timeout=5)
    assert cloudpickle.loads(cloudpickle.dumps(executor)) == executor
    assert executor != DaskExecutor(idle_timeout=5)
    with pytest.raises(ValueError, match="either address"):
        DaskExecutor("tcp://h:8786", cluster_kwargs={"n_workers": 1})
    with pytest.raises(ValueError, match="join_timeout"):
        DaskExecutor(join_timeout=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        DaskExecutor(idle_timeout=-1)
    with pytest.raises(RuntimeError, match="not started"):
        executor.startup_script(_offer("aws", None, PurchaseOption.SPOT), "r")

    runner = CloudSchedTaskRunner(executor="dask", executor_options={"idle_timeout": 3})
    assert runner.duplicate() == runner
    assert cloudpickle.loads(cloudpickle.dumps(runner)) == runner
    assert runner != CloudSchedTaskRunner(executor="dask", executor_options={"idle_timeout": 4})
    with pytest.raises(ValueError, match='"local", "dask"'):
        CloudSchedTaskRunner(executor=" ")  # other names are CloudSchedExecutor blocks
    with pytest.raises(ValueError, match="only to"):
        CloudSchedTaskRunner(executor="local", executor_options={"idle_timeout": 3})
    with pytest.raises(TypeError):
        CloudSchedTaskRunner(executor="dask", executor_options={"idle_timeoutt": 3})


# ---------------------------------------------------------------------- real cluster (slow)
def _who() -> tuple[str, dict[str, float]]:
    from distributed import get_worker

    worker = get_worker()
    return str(worker.name), dict(worker.state.total_resources)


@pytest.fixture
def local_executor():
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher

    executor = DaskExecutor(
        launcher=LocalWorkerLauncher(), idle_timeout=0.3, monitor_interval=0.1, join_timeout=30
    )
    executor.start()
    yield executor
    executor.stop()


@pytest.mark.slow
def test_bodies_run_on_the_worker_of_their_instance(local_executor) -> None:
    gpu = _placement(TaskNeeds(gpus=1, gpu_type="T4", spot_ok=True), "i-gpu")
    cpu = _placement(TaskNeeds(cpus=2), "i-cpu")
    for placement in (gpu, cpu):
        local_executor.attach(_handle(placement), placement)
    assert local_executor.launcher.names == ["i-cpu", "i-gpu"]
    for placement in (gpu, cpu):
        name, resources = local_executor.run(_who, placement)
        assert name == placement.instance_id
        assert resources == {
            pool_name(placement.decision.offer): pool_slots(placement.decision.offer)
        }
    assert local_executor.run(lambda: sum(range(10)), cpu) == 45
    with pytest.raises(ZeroDivisionError):  # the task's own errors come back unchanged
        local_executor.run(lambda: 1 / 0, cpu)

    lock = threading.Lock()
    with pytest.raises(TypeError, match="inputs cannot be pickled"):
        local_executor.run(lambda: lock.locked(), cpu)
    with pytest.raises(TypeError, match="returned a lock that cannot be pickled"):
        local_executor.run(threading.Lock, cpu)


def _size_on_worker(blob: bytes) -> tuple[str, int]:
    from distributed import get_worker

    return str(get_worker().name), len(blob)


@pytest.mark.slow
def test_large_inputs_travel_as_data_to_their_worker_not_in_the_graph(local_executor) -> None:
    """A dataset passed to a task used to ride inside the task graph (Dask: "Sending large
    graph of size 10.86 MiB"); it is scattered to the placement's worker instead."""
    import functools
    import warnings

    placement = _placement(TaskNeeds(cpus=2), "i-data")
    local_executor.attach(_handle(placement), placement)
    blob = os.urandom(12 << 20)  # above Dask's 10 MB large-graph warning
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = local_executor.run(functools.partial(_size_on_worker, blob), placement)
    assert result == ("i-data", len(blob))
    assert not [w for w in seen if "large graph" in str(w.message)]


@pytest.mark.slow
def test_idle_workers_are_retired_and_reused_workers_are_not(local_executor) -> None:
    placement = _placement(TaskNeeds(cpus=1), "i-warm")
    handle = _handle(placement)
    local_executor.attach(handle, placement)
    local_executor.detach(handle)
    local_executor.attach(handle, placement)  # warm reuse before the idle timeout
    time.sleep(0.6)
    assert local_executor.launcher.names == ["i-warm"]  # busy: never retired
    local_executor.detach(handle)
    deadline = time.monotonic() + 10
    while local_executor.launcher.names and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local_executor.launcher.names == []
    workers = local_executor.client.scheduler_info(n_workers=-1)["workers"]
    assert all(w["name"] != "i-warm" for w in workers.values())


@pytest.mark.slow
@pytest.mark.parametrize("processes", [False, True], ids=["in-process", "subprocess"])
def test_losing_the_worker_mid_task_raises_spot_interrupted(processes: bool, tmp_path) -> None:
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher

    launcher = LocalWorkerLauncher(processes=processes)
    executor = DaskExecutor(launcher=launcher, monitor_interval=0.1, join_timeout=60)
    executor.start()
    try:
        placement = _placement(TaskNeeds(cpus=1, spot_ok=True), "i-doomed")
        executor.attach(_handle(placement), placement)
        outcome: queue.Queue[BaseException | str] = queue.Queue()
        flag = tmp_path / "started"

        def hang(path: str = str(flag), seconds: float = 4 if not processes else 60) -> str:
            import pathlib  # a nested function travels by value, even to a subprocess worker
            import time

            pathlib.Path(path).touch()
            time.sleep(seconds)
            return "finished"

        def body() -> None:
            try:
                outcome.put(executor.run(hang, placement))
            except BaseException as err:
                outcome.put(err)

        thread = threading.Thread(target=body)
        thread.start()
        deadline = time.monotonic() + 30
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        launcher.kill("i-doomed")
        error = outcome.get(timeout=20)
        thread.join()
        assert isinstance(error, SpotInterrupted)
        assert error.instance_id == "i-doomed"
        assert error.offer_key == placement.decision.offer.key
        assert "lost while the task ran" in str(error)
    finally:
        executor.stop()
    assert launcher.names == []


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True])
def test_a_worker_with_other_versions_is_refused_and_retired(
    tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_cloudsched.adapters.execute import versions
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher

    flow = {**versions.flow_versions(), "python": "3.99", "cloudpickle": "0.0.1"}
    monkeypatch.setattr(versions, "flow_versions", lambda: flow)
    launcher = LocalWorkerLauncher()
    executor = DaskExecutor(launcher=launcher, join_timeout=30, tls=tls)
    executor.start()
    try:
        placement = _placement(TaskNeeds(cpus=1), "i-old-image")
        expected = (
            r"^CloudSchedExecutor\.container_image / python: worker i-old-image refused.*"
            r"python 3\.\d+ \(flow: 3\.99\).*cloudpickle"
        )
        with pytest.raises(ProvisioningError, match=expected):
            executor.attach(_handle(placement), placement)
        assert launcher.names == []
        deadline = time.monotonic() + 10
        while executor.client.scheduler_info(n_workers=-1)["workers"]:
            assert time.monotonic() < deadline, "the refused worker is still connected"
            time.sleep(0.05)
    finally:
        executor.stop()


def test_version_differences_ignore_only_an_absent_optional_package() -> None:
    from prefect_cloudsched.adapters.execute.versions import differences

    flow = {"python": "3.11", "distributed": "1", "cloudpickle": "2", "prefect_cloudsched": "0.1"}
    assert differences(flow, {**flow, "prefect_cloudsched": None}) == []
    assert differences(flow, {**flow, "prefect_cloudsched": "0.2"}) == [
        "prefect_cloudsched 0.2 (flow: 0.1)"
    ]
    assert differences(flow, {**flow, "distributed": None}) == ["distributed missing (flow: 1)"]


def test_a_worker_that_never_joins_is_a_bounded_provisioning_error(monkeypatch, caplog) -> None:
    from prefect_cloudsched.adapters.execute import dask as dask_executor
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor

    monkeypatch.setattr(dask_executor, "JOIN_PROGRESS_S", 0.2)
    executor = DaskExecutor(join_timeout=0.7)  # boot-script launcher: nobody starts a worker
    executor.start()
    try:
        placement = _placement(TaskNeeds(cpus=1), "i-silent")
        started = time.monotonic()
        with (
            caplog.at_level("WARNING", logger=dask_executor.logger.name),
            pytest.raises(ProvisioningError, match="no Dask worker named i-silent"),
        ):
            executor.attach(_handle(placement), placement)
        assert time.monotonic() - started < 5
    finally:
        executor.stop()
    waits = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert waits and "i-silent" in waits[0] and "join_timeout_seconds=0.7" in waits[0]


@pytest.mark.slow
def test_unplaced_bodies_need_some_worker() -> None:
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor

    unplaced = _placement(TaskNeeds(cpus=1), None)
    empty = DaskExecutor()
    empty.start()
    try:
        with pytest.raises(ProvisioningError, match="has no provisioner"):
            empty.run(lambda: 1, unplaced)
    finally:
        empty.stop()
    plain = DaskExecutor(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1})
    plain.start()
    try:
        assert plain.run(lambda: 41 + 1, unplaced) == 42
    finally:
        plain.stop()


@pytest.mark.slow
def test_boot_script_starts_a_worker_that_joins_and_powers_off_when_retired(tmp_path) -> None:
    """Run the real boot script with stubbed ``curl`` (metadata) and ``shutdown``."""
    import os
    import sys

    from prefect_cloudsched.adapters.execute.dask import DaskExecutor

    stubs = tmp_path / "bin"
    stubs.mkdir()
    powered_off = tmp_path / "powered-off"
    for name, body in (("curl", "echo i-booted"), ("shutdown", f"touch {powered_off}")):
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    log = tmp_path / "worker.log"
    executor = DaskExecutor(
        bootstrap=BootstrapConfig(
            python=sys.executable, install=False, log_path=str(log), workdir=str(tmp_path)
        ),
        worker_args=("--no-dashboard", "--memory-limit", "0"),
        join_timeout=60,
        monitor_interval=0.1,
    )
    executor.start()
    placement = _placement(TaskNeeds(cpus=1), "i-booted")
    script = executor.startup_script(placement.decision.offer, "run-1")
    assert script is not None
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    boot = subprocess.Popen(["bash", "-c", script], env=env)
    try:
        executor.attach(_handle(placement), placement)

        def who() -> tuple[str, dict[str, float]]:  # nested: travels by value to the process
            from distributed import get_worker

            worker = get_worker()
            return str(worker.name), dict(worker.state.total_resources)

        name, resources = executor.run(who, placement)
        offer = placement.decision.offer
        assert name == "i-booted"
        assert resources == {pool_name(offer): pool_slots(offer)}
    finally:
        executor.stop()  # retires the worker: the script goes on to power the instance off
        try:
            boot.wait(timeout=30)
        finally:
            if boot.poll() is None:
                boot.kill()
    assert powered_off.exists(), log.read_text()
    assert "starting worker i-booted for run run-1" in log.read_text()


def test_worker_spec_matches_the_offer() -> None:
    offer = _offer("gcp", "L4", PurchaseOption.ON_DEMAND)
    spec = WorkerSpec.for_offer(offer, scheduler_address="tcp://s:8786", name="vm-1")
    assert spec.resources == {pool_name(offer): float(offer.gpu_count)}
    assert spec.nthreads == offer.gpu_count
    args = spec.cli_args()
    assert args[:3] == ["tcp://s:8786", "--name", "vm-1"]


# ---------------------------------------------------------------------- a flow (harness, slow)
class LocalCloud(RecordingProvisioner):
    """A provisioner whose "instances" are records; the executor's launcher gives them workers.

    Instances here are never reclaimed by the cloud; losses come from killed workers.
    """

    def instance_id(self, offer: Offer, task_name: str) -> str:
        return f"{self.cloud}-{task_name}-{len(self.started)}"


ATTEMPTS: Counter[str] = Counter()
TO_KILL: queue.Queue[str] = queue.Queue()
RELEASE = threading.Event()


def _gpu_body(x: int) -> tuple[str, dict[str, float], int]:
    name, resources = _who()
    ATTEMPTS["gpu"] += 1
    if ATTEMPTS["gpu"] == 1:  # first attempt: its worker is killed under it
        TO_KILL.put(name)
        RELEASE.wait(30)
    return name, resources, x * 2


@pytest.mark.slow
@pytest.mark.harness
def test_flow_places_each_task_on_its_pool_and_survives_a_worker_kill(
    prefect_harness, ledger_url
) -> None:
    from prefect import flow, task

    from prefect_cloudsched import CloudSchedTaskRunner, Ledger, requires
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher

    launcher = LocalWorkerLauncher()
    clouds = {"aws": LocalCloud("aws"), "gcp": LocalCloud("gcp")}

    @requires(gpus=1, gpu_type="T4", spot_ok=True, deadline=timedelta(hours=4))
    @task
    def gpu_step(x: int) -> tuple[str, dict[str, float], int]:
        return _gpu_body(x)

    @requires(cpus=2, memory_gib=4)
    @task
    def cpu_step() -> tuple[str, dict[str, float]]:
        return _who()

    @flow(
        task_runner=CloudSchedTaskRunner(
            max_workers=4,
            provisioners=clouds,
            executor="dask",
            executor_options={
                "launcher": launcher,
                "monitor_interval": 0.1,
                "join_timeout": 30,
            },
        )
    )
    def pipeline() -> tuple[Any, Any]:
        gpu, cpu = gpu_step.submit(21), cpu_step.submit()
        return gpu.result(), cpu.result()

    def killer() -> None:
        name = TO_KILL.get(timeout=120)
        time.sleep(0.5)  # some paid work is lost with the instance
        launcher.kill(name)
        RELEASE.set()

    ATTEMPTS.clear()
    RELEASE.clear()
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    (gpu_worker, gpu_resources, doubled), (cpu_worker, cpu_resources) = pipeline()
    thread.join(timeout=5)
    assert doubled == 42 and ATTEMPTS["gpu"] == 2

    ledger = Ledger(ledger_url)
    rows = {(r.task_name, r.state): r for r in ledger.placements()}
    assert set(rows) == {
        ("gpu_step", "interrupted"),
        ("gpu_step", "completed"),
        ("cpu_step", "completed"),
    }
    for worker, resources, row in (
        (gpu_worker, gpu_resources, rows["gpu_step", "completed"]),
        (cpu_worker, cpu_resources, rows["cpu_step", "completed"]),
    ):
        assert worker == row.instance_id  # ran on the worker of its own instance
        [offer] = [
            o for o in CATALOG.offers if o.key == row.offer_key and o.gpu_type == row.gpu_type
        ]
        assert resources == {pool_name(offer): pool_slots(offer)}
    assert rows["gpu_step", "completed"].gpu_type == "T4"
    assert rows["cpu_step", "completed"].gpus == 0
    interrupted = rows["gpu_step", "interrupted"]
    assert interrupted.instance_id != gpu_worker and interrupted.runtime_s >= 0.5
    assert interrupted.wasted_micro == interrupted.cost_micro
    [loss] = ledger.interruptions()
    assert loss["instance_id"] == interrupted.instance_id

    # nothing left behind: no worker, no instance, no monitor thread
    assert launcher.names == []
    assert all(not cloud.running for cloud in clouds.values())
    assert sum(len(c.started) for c in clouds.values()) == 3
    assert all(script and "dask worker" in script for c in clouds.values() for script in c.scripts)
    assert not [t for t in threading.enumerate() if t.name == "cloudsched-dask-monitor"]


def test_boot_script_carries_the_worker_key_only_when_it_is_not_on_the_image() -> None:
    from prefect_cloudsched.adapters.execute.tls import TlsMaterial

    tls = TlsMaterial.generate()
    offer = _offer("aws", "T4", PurchaseOption.SPOT)
    script = partial(
        startup_script, offer, scheduler_address="tls://10.0.0.5:8786", run_id="r", tls=tls
    )
    inline = script()
    subprocess.run(["bash", "-n"], input=inline.encode(), check=True)
    assert tls.worker_key_pem.strip() in inline and tls.key_pem.strip() not in inline
    assert "--tls-key /var/lib/cloudsched/tls/worker-key.pem" in inline
    baked = script(config=BootstrapConfig(tls_dir_on_image="/etc/dask"))
    assert "PRIVATE KEY" not in baked and "--tls-key /etc/dask/worker-key.pem" in baked
    container = script(config=BootstrapConfig(container_image="ghcr.io/me/worker:py3.11"))
    subprocess.run(["bash", "-n"], input=container.encode(), check=True)
    run = next(line for line in container.splitlines() if line.startswith("docker run"))
    assert "--gpus all" in run and "--network host" in run
    assert "-v /var/lib/cloudsched/tls:/cloudsched-tls:ro" in run
    assert "--tls-ca-file /cloudsched-tls/ca.pem" in run and "pip install" not in container


@pytest.mark.slow
def test_a_checkpointable_body_on_a_worker_keeps_its_state_under_the_task_run_id(
    local_executor, tmp_path
) -> None:
    """On an instance's worker there is no Prefect task run context: the documented
    ``checkpoint.save(state)`` (no ``key=``) failed there. The runner now sends a
    checkpointable body wrapped in ``checkpoint.run_as(task_run_id, ...)``, so a retry on
    another worker finds the state."""
    from prefect_cloudsched.prefect import checkpoint

    placement = _placement(TaskNeeds(cpus=2), "i-cpu")
    local_executor.attach(_handle(placement), placement)
    location = f"file://{tmp_path}"

    def body() -> int:
        from prefect_cloudsched.prefect import checkpoint as on_worker

        state = on_worker.load(default={"n": 0}, location=location)
        on_worker.save({"n": state["n"] + 1}, location=location)
        return state["n"]

    with pytest.raises(RuntimeError, match="no Prefect task run here"):
        local_executor.run(body, placement)
    keyed = functools.partial(checkpoint.run_as, "tr-remote", body)
    assert local_executor.run(keyed, placement) == 0
    assert local_executor.run(keyed, placement) == 1  # the retry resumes
    assert checkpoint.load(key="tr-remote", location=location) == {"n": 2}


@pytest.mark.slow
def test_a_move_request_reaches_a_body_on_a_worker(local_executor, tmp_path) -> None:
    """The spot controller's move request lives in the runner's process; a body on an
    instance's worker reads it through the executor's cluster-wide flag at its next save."""
    from prefect_cloudsched.errors import MoveRequested
    from prefect_cloudsched.prefect import checkpoint
    from prefect_cloudsched.prefect.runner import _Mover

    placement = _placement(TaskNeeds(cpus=2), "i-cpu")
    local_executor.attach(_handle(placement), placement)
    location = f"file://{tmp_path}"

    def body() -> int:
        import time as _time

        from prefect_cloudsched.prefect import checkpoint as on_worker

        for step in range(400):
            on_worker.save({"step": step}, location=location)
            _time.sleep(0.025)
        return -1  # never asked to move

    mover = _Mover(local_executor)
    threading.Timer(0.5, mover.request_move, ("tr-move", "spot control: test")).start()
    with pytest.raises(MoveRequested):
        local_executor.run(functools.partial(checkpoint.run_as, "tr-move", body), placement)
    saved = checkpoint.load(key="tr-move", location=location)["step"]
    assert 0 < saved < 399  # stopped at a save, the state kept
    mover.cancel_move("tr-move")  # the next attempt is not stopped by the old request

    def short() -> int:
        from prefect_cloudsched.prefect import checkpoint as on_worker

        on_worker.save({"step": "again"}, location=location)
        return 1

    assert local_executor.run(functools.partial(checkpoint.run_as, "tr-move", short), placement)
