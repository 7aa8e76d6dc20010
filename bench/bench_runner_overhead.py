"""Runner overhead: 500 trivial ``.map``ped tasks, CloudSchedTaskRunner vs ThreadPoolTaskRunner.

Run: ``.venv/bin/python bench/bench_runner_overhead.py [--runs 5] [--tasks 500]``.
All runners get the same ``max_workers``; runs are interleaved (A, B, C, C, B, A, ...) against
one local Prefect API server so drift in machine load hits all alike; the median flow wall
time of each is compared (target ratio ≤ 1.10). Three arms:

* ``threadpool``: Prefect's ``ThreadPoolTaskRunner``.
* ``cloudsched``: our runner, default settings, the task declares no needs (decided, accounted
  on the default CPU offer, one ledger row each; untagged — such tasks "run as before").
* ``cloudsched-declared``: the same task with ``@requires(cpus=1)``, so each task run also
  carries the decision tag, which costs a Prefect concurrency-lease API round trip per run.

The local Prefect server records task-run events in the background; a run that starts while
it still drains the previous run's backlog is slowed for reasons that are not the runner's,
so each run waits ``SETTLE_S`` first. Writes ``bench/results/runner_overhead.*``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import isolate, write

isolate()

from prefect import flow, task  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from prefect_cloudsched import CloudSchedTaskRunner, Ledger, requires  # noqa: E402

MAX_WORKERS = 8
SETTLE_S = 10.0


@task
def trivial(x: int) -> int:
    return x + 1


@requires(cpus=1)  # its own function: with_options would share (and tag) trivial's
@task(name="trivial-declared")
def trivial_declared(x: int) -> int:
    return x + 1


def make_flow(runner: object, name: str, step: object = trivial):
    @flow(name=name, task_runner=runner)
    def mapped(n: int) -> int:
        return sum(step.map(range(n)).result())

    return mapped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()
    flows = {
        "threadpool": make_flow(ThreadPoolTaskRunner(max_workers=MAX_WORKERS), "bench-threadpool"),
        "cloudsched": make_flow(CloudSchedTaskRunner(max_workers=MAX_WORKERS), "bench-cloudsched"),
        "cloudsched-declared": make_flow(
            CloudSchedTaskRunner(max_workers=MAX_WORKERS),
            "bench-cloudsched-declared",
            trivial_declared,
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in flows}
    with prefect_test_harness(server_startup_timeout=120):
        for f in flows.values():  # warm-up run each (imports, first API calls)
            f(20)
        for i in range(args.runs):
            order = list(flows) if i % 2 == 0 else list(reversed(flows))
            for name in order:
                time.sleep(SETTLE_S)  # let the server drain the last run's events first
                t0 = time.perf_counter()
                assert flows[name](args.tasks) == sum(range(1, args.tasks + 1))
                times[name].append(time.perf_counter() - t0)
                print(f"run {i + 1} {name}: {times[name][-1]:.2f}s", flush=True)
        rows = len(Ledger().placements(flow_name="bench-cloudsched"))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["cloudsched"] / med["threadpool"]
    expected_rows = args.tasks * args.runs + 20
    data = {
        "tasks": args.tasks,
        "runs": args.runs,
        "max_workers": MAX_WORKERS,
        "seconds": times,
        "median_s": med,
        "ratio": round(ratio, 3),
        "target": 1.10,
        "pass": ratio <= 1.10,
        "ledger_rows": rows,
        "ledger_rows_expected": expected_rows,
    }
    ratio_declared = med["cloudsched-declared"] / med["threadpool"]
    data["ratio_declared_tagged"] = round(ratio_declared, 3)
    md = (
        f"| runner | median of {args.runs} (s) | all runs (s) |\n|---|---|---|\n"
        + "".join(
            f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |\n"
            for k, v in times.items()
        )
        + f"\nRatio cloudsched / threadpool: **{ratio:.3f}** (target ≤ 1.10: "
        f"{'pass' if ratio <= 1.10 else 'MISS'}); {args.tasks} trivial mapped tasks, "
        f"max_workers={MAX_WORKERS}; ledger rows written {rows} of {expected_rows}.\n"
        f"Tasks with declared needs (each task run tagged with the decision): "
        f"**{ratio_declared:.3f}**.\n"
    )
    write("runner_overhead", data, md)


if __name__ == "__main__":
    main()
