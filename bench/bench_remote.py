"""Remote execution on the mock clouds: cold start, warm dispatch, warm throughput, overhead.

Run: ``.venv/bin/python bench/bench_remote.py [--cold 4] [--warm 200] [--tasks 60] [--runs 3]``.

Figures (every one measured here, on the mock clouds, with TLS on):

1. **Cold**: instance request → worker joined. ``Provisioner.ensure`` through the real
   boto3 / google-cloud-compute clients against moto and the fake GCE (image resolved from
   SSM on AWS), then ``DaskExecutor.attach`` until the instance's worker has registered over
   TLS and passed the version check. The worker is a real ``python -m dask worker``
   subprocess (``LocalWorkerLauncher(processes=True)``: the boot script's command line), so
   the join includes a real interpreter start — but no VM boot, no image pull and no
   ``pip install``, which on a real account add minutes (docs/real-clouds.md).
2. **Warm dispatch**: ``DaskExecutor.run`` called → the body's first line runs, on an
   attached worker (the body reads the wall clock; same machine, same clock).
3. **Warm throughput**: tasks per minute through the whole runner path — decide, reuse the
   warm instance (``ensure`` → describe + retag), attach, run the body remotely, detach,
   park — with ``max_workers=1`` so one instance serves every task.
4. **Overhead vs prefect-dask** on the same local cluster (TLS, 2 in-process workers):
   CloudSched with the remote executor on that cluster vs ``DaskTaskRunner`` (target ≤ 1.15).

Writes ``bench/results/remote.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from _common import isolate, write

home = isolate()

from _flows import make_flow  # noqa: E402
from distributed import LocalCluster  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

from prefect_cloudsched import CloudSchedTaskRunner, requires  # noqa: E402
from prefect_cloudsched.adapters.execute.base import Placement  # noqa: E402
from prefect_cloudsched.adapters.execute.dask import DaskExecutor  # noqa: E402
from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher  # noqa: E402
from prefect_cloudsched.adapters.execute.tls import TlsMaterial  # noqa: E402
from prefect_cloudsched.core.catalog import load_catalog  # noqa: E402
from prefect_cloudsched.core.needs import TaskNeeds  # noqa: E402
from prefect_cloudsched.core.policy import PlacementState, PolicyConfig, decide  # noqa: E402
from prefect_cloudsched.testing.clouds import MockClouds  # noqa: E402

TARGET = 1.15


def _placement(cloud: str, instance_id: str = "pending") -> Placement:
    now = datetime.now(UTC)
    decision = decide(
        TaskNeeds(gpus=1, spot_ok=True),
        load_catalog(),
        now=now,
        submitted_at=now,
        state=PlacementState(),
        config=PolicyConfig(allowed_clouds=frozenset({cloud})),
    )
    return Placement(decision, "bench-remote", "bench-task", 1, instance_id)


def cold_starts(clouds: MockClouds, executor: DaskExecutor, n: int) -> dict[str, list[float]]:
    """Seconds from ``ensure`` called to worker joined, per cloud (and the two halves)."""
    found: dict[str, list[float]] = {}
    for cloud in ("aws", "gcp"):
        provisioner = clouds.provisioners[cloud]
        for i in range(n):
            placement = _placement(cloud)
            offer = placement.decision.offer
            t0 = time.perf_counter()
            run_id = f"bench-cold-{cloud}-{i}"  # a fresh run: no warm instance to reuse
            handle = provisioner.ensure(
                offer,
                run_id=run_id,
                task_name="cold",
                startup_script=executor.startup_script(offer, run_id),
            )
            t1 = time.perf_counter()
            placed = Placement(placement.decision, run_id, "cold", 1, handle.instance_id)
            executor.attach(handle, placed)
            t2 = time.perf_counter()
            assert executor.run(lambda: 42, placed) == 42
            executor.detach(handle)
            provisioner.release_run(run_id)
            executor.launcher.stop(handle.instance_id)
            found.setdefault(f"{cloud}_total", []).append(t2 - t0)
            found.setdefault(f"{cloud}_ensure", []).append(t1 - t0)
            found.setdefault(f"{cloud}_join", []).append(t2 - t1)
    return found


def warm_dispatch(clouds: MockClouds, executor: DaskExecutor, n: int) -> list[float]:
    """Seconds from ``DaskExecutor.run`` called to the body's first line, on one worker."""
    provisioner = clouds.provisioners["aws"]
    placement = _placement("aws")
    offer = placement.decision.offer
    handle = provisioner.ensure(offer, run_id="bench-remote", task_name="warm")
    placed = Placement(placement.decision, "bench-remote", "warm", 1, handle.instance_id)
    executor.attach(handle, placed)
    delays = []
    try:
        for _ in range(n):
            t0 = time.time()
            started = executor.run(time.time, placed)
            delays.append(started - t0)
    finally:
        executor.detach(handle)
        provisioner.release(handle)
    return delays


@requires(cpus=1, memory_gib=1)
@task
def small(x: int) -> int:
    """One trivial placed task."""
    return x * 2


@flow(name="bench-remote-warm")
def sequential(n: int) -> int:
    """``n`` placed tasks one after another (max_workers=1: one warm instance serves all)."""
    return sum(small.map(range(n)).result())


def warm_throughput(clouds: MockClouds, n: int) -> dict[str, Any]:
    """Tasks per minute through the whole runner path on one warm instance."""
    runner = CloudSchedTaskRunner(
        max_workers=1,
        provisioners=clouds.provisioners,
        ledger_url=f"sqlite:///{home / 'ledger.db'}",
        executor="dask",
        executor_options={
            "launcher": LocalWorkerLauncher(),
            "tls": True,
            "idle_timeout": 60,
            "monitor_interval": 0.2,
        },
    )
    started = time.perf_counter()
    assert sequential.with_options(task_runner=runner)(n) == sum(2 * x for x in range(n))
    seconds = time.perf_counter() - started
    instances = {i["instance_id"] for i in clouds.running_instances()}
    return {"tasks": n, "seconds": seconds, "per_minute": 60 * n / seconds, "left": instances}


def overhead(runs: int, tasks: int) -> dict[str, Any]:
    """CloudSched (remote executor) vs prefect-dask on one TLS LocalCluster, interleaved."""
    tls = TlsMaterial.generate()
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        protocol="tls://",
        host="127.0.0.1",
        security=tls.security(),
    ) as cluster:
        address = cluster.scheduler_address
        flows = {
            "prefect-dask": make_flow(
                DaskTaskRunner(address=address, client_kwargs={"security": tls.security()}),
                "bench-remote-prefect-dask",
            ),
            "cloudsched-remote": make_flow(
                CloudSchedTaskRunner(
                    max_workers=8,
                    ledger_url=f"sqlite:///{home / 'ledger.db'}",
                    executor="dask",
                    executor_options={"address": address, "tls": tls},
                ),
                "bench-remote-cloudsched",
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in flows}
        for f in flows.values():
            f(20)  # warm-up
        for i in range(runs):
            for name in list(flows) if i % 2 == 0 else list(reversed(flows)):
                t0 = time.perf_counter()
                assert flows[name](tasks) == sum(range(1, tasks + 1))
                times[name].append(time.perf_counter() - t0)
                print(f"overhead run {i + 1} {name}: {times[name][-1]:.2f}s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "seconds": times,
        "median_s": med,
        "ratio": med["cloudsched-remote"] / med["prefect-dask"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", type=int, default=4, help="cold starts per cloud")
    parser.add_argument("--warm", type=int, default=200, help="warm dispatches")
    parser.add_argument("--tasks", type=int, default=60, help="tasks of the throughput run")
    parser.add_argument("--runs", type=int, default=3, help="overhead runs per runner")
    parser.add_argument("--map", type=int, default=200, help="mapped tasks per overhead run")
    args = parser.parse_args()
    with (
        prefect_test_harness(server_startup_timeout=180),
        MockClouds(owner_id="bench-remote", warm_seconds=30, heartbeat_seconds=30) as clouds,
    ):
        executor = DaskExecutor(
            cluster_kwargs={"host": "127.0.0.1"},
            launcher=LocalWorkerLauncher(processes=True),
            tls=True,
            join_timeout=120,
            idle_timeout=600,
            monitor_interval=0.2,
        )
        executor.start()
        try:
            cold = cold_starts(clouds, executor, args.cold)
        finally:
            executor.stop()
        in_process = DaskExecutor(
            cluster_kwargs={"host": "127.0.0.1"}, launcher=LocalWorkerLauncher(), tls=True
        )
        in_process.start()
        try:
            warm = warm_dispatch(clouds, in_process, args.warm)
        finally:
            in_process.stop()
        for cloud in ("aws", "gcp"):
            clouds.provisioners[cloud].release_run("bench-remote")
        throughput = warm_throughput(clouds, args.tasks)
        left = clouds.running_instances()
        ratio = overhead(args.runs, args.map)
    write_results(args, cold, warm, throughput, ratio, left)


def write_results(
    args: argparse.Namespace,
    cold: dict[str, list[float]],
    warm: list[float],
    throughput: dict[str, Any],
    over: dict[str, Any],
    left: list[dict[str, Any]],
) -> None:
    """Medians and raw values to results/remote.json and a table to results/remote.md."""
    cold_med = {k: statistics.median(v) for k, v in cold.items()}
    warm_ms = {
        "median": 1000 * statistics.median(warm),
        "p95": 1000 * statistics.quantiles(warm, n=20)[-1],
    }
    ratio = over["ratio"]
    data = {
        "cold_start_s": {k: round(v, 3) for k, v in cold_med.items()},
        "cold_start_all_s": cold,
        "warm_dispatch_ms": {k: round(v, 2) for k, v in warm_ms.items()},
        "warm_dispatches": len(warm),
        "warm_tasks_per_minute": round(throughput["per_minute"], 1),
        "warm_throughput": {k: v for k, v in throughput.items() if k != "left"},
        "overhead": {**over, "ratio": round(ratio, 3), "target": TARGET, "pass": ratio <= TARGET},
        "left_running_after": len(left),
        "tls": True,
    }
    md = (
        "Remote execution on the mock clouds (TLS on; `bench/bench_remote.py`).\n\n"
        "| figure | AWS (moto) | GCP (fake GCE) |\n|---|---|---|\n"
        f"| cold: request → worker joined, median of {args.cold} (s) | "
        f"{cold_med['aws_total']:.2f} | {cold_med['gcp_total']:.2f} |\n"
        f"| … of which `ensure` (API calls until running) | {cold_med['aws_ensure']:.2f} | "
        f"{cold_med['gcp_ensure']:.2f} |\n"
        f"| … of which worker start + TLS join + version check | {cold_med['aws_join']:.2f} | "
        f"{cold_med['gcp_join']:.2f} |\n\n"
        f"Warm dispatch (`DaskExecutor.run` → body starts, {len(warm)} calls): median "
        f"{warm_ms['median']:.2f} ms, p95 {warm_ms['p95']:.2f} ms.\n\n"
        f"Warm throughput (full runner path, one warm instance, max_workers=1, "
        f"{throughput['tasks']} tasks): **{throughput['per_minute']:.0f} tasks/min** "
        f"({throughput['seconds']:.1f} s).\n\n"
        f"Overhead vs prefect-dask on one TLS LocalCluster ({args.map} trivial mapped tasks, "
        f"median of {args.runs}): cloudsched-remote {over['median_s']['cloudsched-remote']:.2f} s, "
        f"prefect-dask {over['median_s']['prefect-dask']:.2f} s, ratio **{ratio:.3f}** "
        f"(target ≤ {TARGET}: {'pass' if ratio <= TARGET else 'MISS'}).\n\n"
        f"Instances left running afterwards: {len(left)}. Not measured here (no VM on the mock "
        "clouds): VM boot, image pull and package install — minutes on a real account.\n"
    )
    write("remote", data, md)


if __name__ == "__main__":
    main()
