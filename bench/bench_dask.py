"""Dask executor overhead: 500 trivial ``.map``ped tasks, CloudSched+Dask vs prefect-dask.

Run: ``.venv/bin/python bench/bench_dask.py [--runs 5] [--tasks 500]``.

Both flows use the *same* ``LocalCluster`` (2 workers × 1 thread, in-process so the
prefect-dask engines on the workers reach the bench's Prefect API server): prefect-dask's
``DaskTaskRunner(address=...)`` ships each task's whole engine to a worker;
``CloudSchedTaskRunner(executor="dask", executor_options={"address": ...})`` decides a
placement, keeps the engine local and ships only the body (no provisioners here, so bodies
run on any worker). Runs are interleaved against one local Prefect API server; the medians
are compared (target ratio ≤ 1.15). A second figure: the round trip of ``DaskExecutor.run``
for a trivial body pinned to one attached pool worker (no Prefect), which is what each task
pays on a provisioned instance. Writes ``bench/results/dask.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

from _common import isolate, write

home = isolate()

from _flows import make_flow  # noqa: E402
from distributed import LocalCluster  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

from prefect_cloudsched import CloudSchedTaskRunner, Ledger  # noqa: E402
from prefect_cloudsched.adapters.execute.base import Placement  # noqa: E402
from prefect_cloudsched.adapters.execute.dask import DaskExecutor  # noqa: E402
from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher  # noqa: E402
from prefect_cloudsched.adapters.provision.base import InstanceHandle  # noqa: E402
from prefect_cloudsched.core.catalog import load_catalog  # noqa: E402
from prefect_cloudsched.core.needs import TaskNeeds  # noqa: E402
from prefect_cloudsched.core.policy import PlacementState, PolicyConfig, decide  # noqa: E402

TARGET = 1.15
MAX_WORKERS = 8  # local engine threads of the CloudSched runner (as in runner_overhead)
ROUND_TRIPS = 300


def pinned_round_trips(n: int) -> list[float]:
    """Seconds per ``DaskExecutor.run`` of a trivial body on one attached pool worker."""
    catalog = load_catalog()
    now = datetime.now(UTC)
    decision = decide(
        TaskNeeds(cpus=1),
        catalog,
        now=now,
        submitted_at=now,
        state=PlacementState(),
        config=PolicyConfig(),
    )
    offer = decision.offer
    placement = Placement(decision, "bench", "bench-task", 1, "i-bench")
    handle = InstanceHandle(
        offer.cloud, "i-bench", offer.key, offer.region, offer.zone, offer.option.value, "bench"
    )
    executor = DaskExecutor(launcher=LocalWorkerLauncher())
    executor.start()
    try:
        executor.attach(handle, placement)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            assert executor.run(lambda i=i: i + 1, placement) == i + 1
            times.append(time.perf_counter() - t0)
        executor.detach(handle)
    finally:
        executor.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()
    ledger_url = f"sqlite:///{home / 'ledger.db'}"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        prefect_test_harness(server_startup_timeout=120),
    ):
        address = cluster.scheduler_address
        flows = {
            "prefect-dask": make_flow(DaskTaskRunner(address=address), "bench-prefect-dask"),
            "cloudsched-dask": make_flow(
                CloudSchedTaskRunner(
                    max_workers=MAX_WORKERS,
                    ledger_url=ledger_url,
                    executor="dask",
                    executor_options={"address": address},
                ),
                "bench-cloudsched-dask",
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in flows}
        for f in flows.values():  # warm-up run each (imports, first API calls)
            f(20)
        for i in range(args.runs):
            order = list(flows) if i % 2 == 0 else list(reversed(flows))
            for name in order:
                t0 = time.perf_counter()
                assert flows[name](args.tasks) == sum(range(1, args.tasks + 1))
                times[name].append(time.perf_counter() - t0)
                print(f"run {i + 1} {name}: {times[name][-1]:.2f}s", flush=True)
        rows = len(Ledger(ledger_url).placements(flow_name="bench-cloudsched-dask"))
    trips = pinned_round_trips(ROUND_TRIPS)
    trip_ms = {
        "median": 1000 * statistics.median(trips),
        "p95": 1000 * statistics.quantiles(trips, n=20)[-1],
    }
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["cloudsched-dask"] / med["prefect-dask"]
    expected_rows = args.tasks * args.runs + 20
    data = {
        "tasks": args.tasks,
        "runs": args.runs,
        "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=False)",
        "max_workers": MAX_WORKERS,
        "seconds": times,
        "median_s": med,
        "ratio": round(ratio, 3),
        "target": TARGET,
        "pass": ratio <= TARGET,
        "ledger_rows": rows,
        "ledger_rows_expected": expected_rows,
        "pinned_round_trip_ms": {k: round(v, 2) for k, v in trip_ms.items()},
        "pinned_round_trips": ROUND_TRIPS,
    }
    md = (
        f"| runner | median of {args.runs} (s) | all runs (s) |\n|---|---|---|\n"
        + "".join(
            f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |\n"
            for k, v in times.items()
        )
        + f"\nRatio cloudsched-dask / prefect-dask: **{ratio:.3f}** (target ≤ {TARGET}: "
        f"{'pass' if ratio <= TARGET else 'MISS'}); {args.tasks} trivial mapped tasks on one "
        f"LocalCluster (2 workers × 1 thread, in-process), CloudSched max_workers={MAX_WORKERS}; "
        f"ledger rows written {rows} of {expected_rows}.\n\n"
        f"`DaskExecutor.run` round trip of a trivial body pinned to one attached pool worker "
        f"(no Prefect, {ROUND_TRIPS} calls): median {trip_ms['median']:.2f} ms, "
        f"p95 {trip_ms['p95']:.2f} ms.\n"
    )
    write("dask", data, md)


if __name__ == "__main__":
    main()
