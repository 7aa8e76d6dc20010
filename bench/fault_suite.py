"""Fault suite: flows under injected faults must finish, leak nothing, lose no ledger row and
never cross a hard cap. Every figure is measured; a scenario that fails is recorded as NO
(with its error) and the suite goes on.

Cloud scenarios (real Prefect flows through ``CloudSchedTaskRunner`` and the real
provisioners, against ``MockClouds``: moto EC2 server + fake GCE server, loopback only):

- ``storm``: every spot instance is interrupted right after it starts, on both clouds.
- ``capacity``: the first two offers the policy would choose are out of capacity.
- ``throttle``: launches are throttled *after* EC2 started the instance (lost responses).
- ``sigkill``: a flow process is killed with SIGKILL mid-flow after some tasks completed; their
  rows must be in the ledger, and ``reap`` must end the orphans and record what they cost.

Money scenarios (``bench/fault_money.py``): ``ledger_lock`` (another writer holds SQLite's
write lock for 25 s), ``postgres_restart``, ``writers`` (8 processes × 150 tasks, one day
cap), and two hooks that measure the runtime: ``runtime_overrun`` (hard per-run cap vs tasks
that outrun their estimate) and ``shared_day_cap`` (four flow processes, one hard day cap);
and ``instance_cap`` on ``MockClouds`` (a hard per-run cap vs 0.2 s GPU tasks: the report's
spend, task rows + each instance's one-minute minimum, must stay under the cap).

The cloud and hook scenarios run on each ledger backend (SQLite and a real PostgreSQL server
started by ``scripts/postgres.sh``). Each run reports tasks finished, faults injected,
instances of ours still running (target 0), ledger rows expected vs found (rows lost, target
0), max spend ÷ hard cap (target ≤ 1.00) and whether every deadline was met.

Remote-execution bad input (``bench/fault_remote.py``, issue 13; ``--only remote`` runs the
family): a real flow on the Dask executor and the AWS provisioner on moto, where
``remote_never_joins`` (an instance whose worker never joins, 2 s join timeout),
``remote_version_mismatch`` (the worker reports another Python and ``cloudpickle``),
``remote_no_scheduler`` (``scheduler_address`` on a closed loopback port) and
``remote_bad_image`` (``ami_per_region`` names an AMI moto's own validation does not know)
and ``remote_no_image_parameter`` (``gpu_image_parameter`` names an SSM parameter moto's
SSM does not have) must each fail the task with a one-line error naming the setting, leave
none of our instances or workers running, and give every launched instance its ledger row.

Run: ``.venv/bin/python bench/fault_suite.py [--runs N] [--only a,b] [--backends sqlite]
[--out DIR]`` → ``bench/results/fault_suite.{json,md}`` (or ``DIR``).
``tests/test_fault_suite.py`` runs each once.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_outcome import (
    CHANGE_OVER,
    DEADLINE,
    EST_RUNTIME,
    Outcome,
    Trial,
    cloud_outcome,
    cloud_runner,
    failed,
    launched_by,
    ledger_rows,
)


def _work_flow(runner: Any, tasks: int, *, spot_ok: bool) -> Any:
    from prefect import flow, task

    from prefect_cloudsched import requires

    @requires(gpus=1, est_runtime=EST_RUNTIME, deadline=DEADLINE, spot_ok=spot_ok)
    @task
    def step(i: int) -> int:
        time.sleep(0.2)  # a GPU for 0.2 s costs whole micro-dollars: wasted spend shows
        return i * i

    @flow(name=f"fault-suite-{uuid.uuid4().hex[:6]}", task_runner=runner)
    def work() -> list[int]:
        return [f.result() for f in step.map(range(tasks))]

    return work


def _squares_ok(results: list[int]) -> int:
    return sum(a == b for a, b in zip(results, [i * i for i in range(len(results))], strict=True))


# ---------------------------------------------------------------------- cloud scenarios
def storm(clouds: Any, tmp: Path, backend: str, *, tasks: int = 4, interrupt: int = 10**6):
    """Every spot instance (up to ``interrupt``) is reclaimed as soon as it starts."""
    from prefect_cloudsched.adapters.ledger import Ledger

    trial = Trial.start(tmp, backend, "storm")
    before = len(clouds.interrupted)
    clouds.interrupt_next_spot(count=interrupt)
    work = _work_flow(cloud_runner(clouds.provisioners_for(trial.owner)), tasks, spot_ok=True)
    submitted = datetime.now(UTC)
    try:
        results = work()
    finally:
        clouds.disarm()
    rows = ledger_rows(trial.ledger_url)
    interrupted = len(clouds.interrupted) - before
    completed = [r for r in rows if r.state == "completed"]
    return cloud_outcome(
        clouds,
        trial,
        "storm",
        rows,
        submitted,
        tasks=tasks,
        tasks_ok=_squares_ok(results),
        faults_injected=interrupted,
        interruptions=len(Ledger(trial.ledger_url).interruptions()),
        rows_expected=interrupted + tasks,
        detail=f"completed on: {sorted({r.option for r in completed})}",
    )


def capacity(clouds: Any, tmp: Path, backend: str, *, tasks: int = 3) -> Outcome:
    """The policy's first two choices are out of capacity; the runner falls back."""
    from prefect_cloudsched.core.catalog import load_catalog
    from prefect_cloudsched.core.needs import TaskNeeds
    from prefect_cloudsched.core.policy import PlacementState, PolicyConfig, decide

    trial = Trial.start(tmp, backend, "capacity")
    policy = dict(allowed_clouds=frozenset({"aws"}))
    needs = TaskNeeds(gpus=1, est_runtime=EST_RUNTIME, deadline=DEADLINE)
    state, refused = PlacementState(), []
    for _ in range(2):
        config = PolicyConfig(change_over=CHANGE_OVER, **policy)
        choice = decide(needs, load_catalog(), now=datetime.now(UTC), state=state, config=config)
        refused.append(choice.offer)
        state.block(choice.offer.key, "test")
    fired = clouds.moto.faults_fired
    for offer in refused:
        clouds.stockout(offer, count=10**6)
    submitted = datetime.now(UTC)
    try:
        results = _work_flow(
            cloud_runner(clouds.provisioners_for(trial.owner), **policy), tasks, spot_ok=False
        )()
    finally:
        clouds.moto.clear_faults()
    rows = ledger_rows(trial.ledger_url)
    dodged = all(r.offer_key not in {o.key for o in refused} for r in rows)
    return cloud_outcome(
        clouds,
        trial,
        "capacity",
        rows,
        submitted,
        tasks=tasks,
        tasks_ok=_squares_ok(results) if dodged else 0,
        faults_injected=clouds.moto.faults_fired - fired,
        interruptions=0,
        rows_expected=tasks,
        detail=f"refused {[o.key for o in refused]}, ran on {sorted({r.offer_key for r in rows})}",
    )


def throttle(clouds: Any, tmp: Path, backend: str, *, tasks: int = 3) -> Outcome:
    """Launches answer RequestLimitExceeded after EC2 started the instance."""
    trial = Trial.start(tmp, backend, "throttle")
    fired, hits = clouds.moto.faults_fired, clouds.moto.token_hits
    clouds.throttle("aws", count=tasks * 2, after=True)
    submitted = datetime.now(UTC)
    try:
        work = _work_flow(
            cloud_runner(clouds.provisioners_for(trial.owner), allowed_clouds=frozenset({"aws"})),
            tasks,
            spot_ok=False,
        )
        results = work()
    finally:
        clouds.moto.clear_faults()
    rows = ledger_rows(trial.ledger_url)
    launched = launched_by(clouds, trial.owner)
    duplicates = len(launched) - len({r.instance_id for r in rows})
    return cloud_outcome(
        clouds,
        trial,
        "throttle",
        rows,
        submitted,
        leaked_besides=max(duplicates, 0),
        tasks=tasks,
        tasks_ok=_squares_ok(results),
        faults_injected=clouds.moto.faults_fired - fired,
        interruptions=0,
        rows_expected=tasks,
        detail=f"instances launched {len(launched)} for {len(rows)} placements; "
        f"{clouds.moto.token_hits - hits} retried launch(es) answered by idempotency token",
    )


_KILLED_FLOW = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    from prefect import flow, task
    from prefect_cloudsched import CloudSchedTaskRunner, requires
    from prefect_cloudsched.testing.aws import DUMMY_KEYS, MOCK_AMI
    from prefect_cloudsched.core.policy import PolicyConfig
    from prefect_cloudsched.adapters.provision.aws import AwsProvisioner, AwsSettings
    from prefect_cloudsched.adapters.provision.gcp import GcpProvisioner, GcpSettings
    from prefect_cloudsched.testing.executor import InstanceStandInExecutor

    aws_url, gcp_url, project, owner, quick_tasks = sys.argv[1:6]
    aws = AwsProvisioner(AwsSettings(regions=("us-east-1",), ami_per_region={"us-east-1": MOCK_AMI},
                                     endpoint_url=aws_url, owner_id=owner, heartbeat_seconds=0.3,
                                     poll_seconds=0.05, **DUMMY_KEYS))
    gcp = GcpProvisioner(GcpSettings(project=project, zones=("us-central1-a", "us-central1-b",
                                     "us-central1-c", "us-central1-f"), endpoint=gcp_url,
                                     owner_id=owner, heartbeat_seconds=0.3, poll_seconds=0.05))

    @task
    def quick(i: int) -> int:
        return i

    @requires(gpus=1, gpu_type="A10G", est_runtime=timedelta(minutes=30))
    @task
    def on_aws() -> None:
        time.sleep(600)

    @requires(gpus=1, gpu_type="P100", est_runtime=timedelta(minutes=30))
    @task
    def on_gcp() -> None:
        time.sleep(600)

    @flow(task_runner=CloudSchedTaskRunner(
        provisioners={"aws": aws, "gcp": gcp}, label_task_runs=False,
        executor=InstanceStandInExecutor(),
        policy=PolicyConfig(allowed_regions=frozenset({"us-east-1", "us-central1"}))))
    def doomed() -> None:
        for future in quick.map(range(int(quick_tasks))):
            future.result()
            print("completed", flush=True)
        a, g = on_aws.submit(), on_gcp.submit()
        a.wait(); g.wait()

    doomed()
    """
)


def sigkill(
    clouds: Any, tmp: Path, backend: str, *, quick: int = 5, ttl: float = 2.0, timeout=300.0
) -> Outcome:
    """SIGKILL a flow process after ``quick`` tasks completed and while two instances run:
    the completed tasks' rows must be in the ledger; ``reap`` ends the orphans and records
    one row each."""
    from prefect.settings import PREFECT_API_URL

    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.adapters.provision.reaper import ORPHANS_FLOW, reap

    trial = Trial.start(tmp, backend, "sigkill")
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value() or ""),
        "PREFECT_CLOUDSCHED_LEDGER_URL": trial.ledger_url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    args = [clouds.aws_url, clouds.gcp_url, clouds.project, trial.owner, str(quick)]
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_FLOW, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    completed = _kill_when_running(process, clouds, trial.owner, quick, timeout)
    orphans = len(clouds.running_instances(owner_id=trial.owner))
    time.sleep(ttl + 1.5)  # the dead process's heartbeat goes stale
    ledger = Ledger(trial.ledger_url)
    actions = reap(clouds.provisioners_for(trial.owner).values(), heartbeat_ttl=ttl, ledger=ledger)
    reaped = sum(a.done for a in actions)
    rows = ledger.placements()
    task_rows = [r for r in rows if r.flow_name != ORPHANS_FLOW and r.state == "completed"]
    orphan_rows = [r for r in rows if r.flow_name == ORPHANS_FLOW]
    ledger.dispose()
    return Outcome(
        scenario="sigkill",
        backend=backend,
        tasks=quick,
        tasks_ok=completed,
        faults_injected=1,
        interruptions=0,
        instances_leaked=len(clouds.running_instances(owner_id=trial.owner)),
        rows_expected=completed + reaped,
        rows_found=len(task_rows) + len(orphan_rows),
        deadlines_met=None,
        seconds=trial.seconds(),
        detail=f"{completed} tasks completed before the kill, {len(task_rows)} of their rows "
        f"kept; {orphans} orphaned by the kill, {reaped} reaped, {len(orphan_rows)} orphan "
        f"row(s) costing ${sum(r.cost_micro for r in orphan_rows) / 1e6:.6f}",
    )


def _kill_when_running(
    process: subprocess.Popen, clouds: Any, owner: str, quick: int, timeout: float
) -> int:
    """Count the child's completed quick tasks; SIGKILL it once they all completed and only
    the two long tasks' instances run."""
    import selectors

    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    provisioners = clouds.provisioners_for(owner).values()
    completed, deadline = 0, time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()  # before reading its stderr: a live child never closes it
                error = process.stderr.read()[-2000:] if process.stderr else ""
                raise RuntimeError(
                    f"the flow process never reached its long tasks ({completed} of {quick} "
                    f"quick tasks completed): {error.strip().splitlines()[-1:]}"
                )
            for _ in selector.select(timeout=0.2):
                # raw reads: a buffered readline() could hide a second line from select()
                completed += os.read(process.stdout.fileno(), 65536).count(b"completed")
            if completed < quick:
                continue
            owned = [i for p in provisioners for i in p.list_owned()]
            if len(owned) == 2 and all(i.task_name.startswith("on_") for i in owned):
                return completed
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


# ---------------------------------------------------------------------- the suite
CLOUD_SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "storm": storm,
    "capacity": capacity,
    "throttle": throttle,
    "sigkill": sigkill,
}


def scenarios() -> dict[str, tuple[Callable[..., Outcome], tuple[str, ...], bool]]:
    """name → (function, backends it runs on, needs MockClouds)."""
    import fault_money
    from fault_remote import REMOTE_SCENARIOS

    both = ("sqlite", "postgresql")
    table: dict[str, tuple[Callable[..., Outcome], tuple[str, ...], bool]] = {
        name: (fn, both, True) for name, fn in CLOUD_SCENARIOS.items()
    }
    table.update(
        {
            "ledger_lock": (fault_money.ledger_lock, ("sqlite",), False),
            "postgres_restart": (fault_money.postgres_restart, ("postgresql",), False),
            "writers": (fault_money.writers, both, False),
            "runtime_overrun": (fault_money.runtime_overrun, both, False),
            "shared_day_cap": (fault_money.shared_day_cap, both, False),
            "instance_cap": (fault_money.instance_cap, both, True),
        }
    )
    table.update({name: (fn, both, True) for name, fn in REMOTE_SCENARIOS.items()})
    return table


def selected(name: str, wanted: set[str]) -> bool:
    """Whether ``--only`` picks ``name`` (a family prefix like ``remote`` picks its members)."""
    return not wanted or name in wanted or name.split("_")[0] in wanted


def run_one(fn: Callable[..., Outcome], name: str, backend: str, *args: Any) -> Outcome:
    """Run a scenario; an exception becomes a NO outcome carrying the error."""
    t0 = time.perf_counter()
    try:
        return fn(*args, backend)
    except Exception as err:  # recorded, never fatal: the suite goes on
        traceback.print_exc()
        return failed(name, backend, err, time.perf_counter() - t0)


def summarise(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        key = f"{outcome.scenario}/{outcome.backend}"
        summary.setdefault(key, {"runs": []})["runs"].append(outcome)
    for key, entry in summary.items():
        mine: list[Outcome] = entry.pop("runs")
        ratios = [o.spend_over_cap for o in mine if o.spend_over_cap is not None]
        deadlines = [o.deadlines_met for o in mine if o.deadlines_met is not None]
        told = [bool(o.one_line_error and o.names_setting) for o in mine if o.error_expected]
        summary[key] = {
            "runs": len(mine),
            "all_ok": all(o.ok for o in mine),
            "tasks": sum(o.tasks for o in mine),
            "tasks_ok": sum(o.tasks_ok for o in mine),
            "faults_injected": sum(o.faults_injected for o in mine),
            "interruptions_recorded": sum(o.interruptions for o in mine),
            "instances_leaked": sum(o.instances_leaked for o in mine),
            "rows_expected": sum(o.rows_expected for o in mine),
            "rows_lost": sum(o.rows_lost for o in mine),
            "max_spend_over_cap": max(ratios) if ratios else None,
            "deadlines_met": f"{sum(deadlines)}/{len(deadlines)}" if deadlines else "n/a",
            "one_line_naming_setting": f"{sum(told)}/{len(told)}" if told else "n/a",
            "median_seconds": sorted(o.seconds for o in mine)[len(mine) // 2],
            "errors": sorted({o.error for o in mine if o.error}),
        }
    return summary


def render(summary: dict[str, dict[str, Any]], outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | ledger | runs | tasks ok | faults injected | interruptions recorded | "
        "instances leaked (target 0) | rows lost (target 0) | max spend ÷ hard cap "
        "(target ≤ 1.00) | deadlines met | one-line error naming the setting | median s | "
        "pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        name, backend = key.split("/")
        ratio = "n/a" if s["max_spend_over_cap"] is None else f"{s['max_spend_over_cap']:.2f}"
        lines.append(
            f"| {name} | {backend} | {s['runs']} | {s['tasks_ok']}/{s['tasks']} | "
            f"{s['faults_injected']} | {s['interruptions_recorded']} | {s['instances_leaked']} | "
            f"{s['rows_lost']} of {s['rows_expected']} | {ratio} | {s['deadlines_met']} | "
            f"{s['one_line_naming_setting']} | {s['median_seconds']:.1f} | "
            f"{'YES' if s['all_ok'] else 'NO'} |"
        )
    seen: set[str] = set()
    details = []
    for o in outcomes:
        key = f"{o.scenario}/{o.backend}"
        if key not in seen:
            seen.add(key)
            details.append(f"- {key}: {o.error or o.detail}")
    return "\n".join([*lines, "", "One run of each, in words:", *details, ""])


def main(argv: list[str] | None = None) -> int:
    """Run every scenario ``--runs`` times on each backend and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--out", default="", help="write the results here (not bench/results)")
    args = parser.parse_args(argv)

    from _common import isolate, write

    home = isolate()
    from prefect.testing.utilities import prefect_test_harness

    from prefect_cloudsched.testing.clouds import MockClouds

    wanted = {n for n in args.only.split(",") if n}
    backends = {b for b in args.backends.split(",") if b}
    outcomes: list[Outcome] = []
    with (
        prefect_test_harness(server_startup_timeout=120),
        MockClouds(owner_id="fault-suite", heartbeat_seconds=0.5) as clouds,
    ):
        for name, (fn, on, cloudy) in scenarios().items():
            if not selected(name, wanted):
                continue
            runs = min(args.runs, 2) if name in ("sigkill", "ledger_lock") else args.runs
            for backend in (b for b in on if b in backends):
                for _ in range(runs):
                    extra = (clouds, home) if cloudy else (home,)
                    outcomes.append(run_one(fn, name, backend, *extra))
                    print(outcomes[-1], flush=True)
    summary = summarise(outcomes)
    data = {"summary": summary, "runs": [o.as_dict() for o in outcomes]}
    if args.out:
        _write_to(Path(args.out), data, render(summary, outcomes))
    else:
        write("fault_suite", data, render(summary, outcomes))
    return 0 if all(s["all_ok"] for s in summary.values()) else 1


def _write_to(out: Path, data: dict[str, Any], markdown: str) -> None:
    """``fault_suite.{json,md}`` in ``out`` (a partial run must not replace the suite's)."""
    import json

    from _common import machine

    out.mkdir(parents=True, exist_ok=True)
    (out / "fault_suite.json").write_text(json.dumps({**data, "machine": machine()}, indent=2))
    (out / "fault_suite.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    sys.exit(main())
