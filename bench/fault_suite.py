"""Fault suite: flows under injected cloud faults must finish, leak nothing and lose no rows.

Scenarios (each a real Prefect flow through ``CloudSchedTaskRunner`` and the real
provisioners, against ``MockClouds``: moto EC2 server + fake GCE server, loopback only):

- ``storm``: every spot instance is interrupted right after it starts, on both clouds.
- ``capacity``: the first two offers the policy would choose are out of capacity.
- ``throttle``: launches are throttled *after* EC2 started the instance (lost responses).
- ``sigkill``: a flow process is killed with SIGKILL mid-run; ``reap`` must clean up.

Each run reports faults injected, instances of ours still running at the end (target 0),
ledger rows expected vs found (rows lost, target 0) and whether every task finished.

Run: ``.venv/bin/python bench/fault_suite.py [--runs N]`` → ``bench/results/fault_suite.{json,md}``.
The tests in ``tests/test_fault_suite.py`` run each scenario once.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEADLINE = timedelta(hours=3)


@dataclass
class Outcome:
    """One scenario run."""

    scenario: str
    tasks: int
    tasks_ok: int
    faults_injected: int
    interruptions: int
    instances_leaked: int
    rows_expected: int
    rows_found: int
    deadlines_met: bool
    seconds: float
    detail: str = ""

    @property
    def rows_lost(self) -> int:
        return max(0, self.rows_expected - self.rows_found)

    @property
    def ok(self) -> bool:
        return (
            self.tasks_ok == self.tasks
            and self.instances_leaked == 0
            and self.rows_lost == 0
            and self.deadlines_met
        )


def _fresh_ledger(tmp: Path) -> str:
    url = f"sqlite:///{tmp / f'ledger-{uuid.uuid4().hex[:8]}.db'}"
    os.environ["PREFECT_CLOUDSCHED_LEDGER_URL"] = url
    return url


def _runner(provisioners: dict[str, Any], **policy: Any) -> Any:
    from prefect_cloudsched import CloudSchedTaskRunner
    from prefect_cloudsched.core.policy import PolicyConfig
    from prefect_cloudsched.testing.executor import InstanceStandInExecutor

    # Stand-in clouds have no machine to run a body on: the stand-in executor runs it here.
    return CloudSchedTaskRunner(
        max_workers=4,
        provisioners=provisioners,
        executor=InstanceStandInExecutor(),
        policy=PolicyConfig(**policy),
        spot_retries=2,
        label_task_runs=False,
    )


def _work_flow(runner: Any, tasks: int, *, spot_ok: bool) -> Any:
    from prefect import flow, task

    from prefect_cloudsched import requires

    @requires(gpus=1, est_runtime=timedelta(minutes=20), deadline=DEADLINE, spot_ok=spot_ok)
    @task
    def step(i: int) -> int:
        time.sleep(0.2)  # a GPU for 0.2 s costs whole micro-dollars: wasted spend shows
        return i * i

    @flow(name=f"fault-suite-{uuid.uuid4().hex[:6]}", task_runner=runner)
    def work() -> list[int]:
        return [f.result() for f in step.map(range(tasks))]

    return work


def _rows(ledger_url: str) -> list[Any]:
    from prefect_cloudsched.adapters.ledger import Ledger

    return Ledger(ledger_url).placements()


def _deadlines_met(rows: list[Any]) -> bool:
    if not rows:
        return False
    return max(r.ended_at for r in rows) - min(r.started_at for r in rows) <= DEADLINE


def storm(clouds: Any, tmp: Path, *, tasks: int = 4, interrupt: int = 10**6) -> Outcome:
    """Every spot instance (up to ``interrupt``) is reclaimed as soon as it starts."""
    from prefect_cloudsched.adapters.ledger import Ledger

    t0 = time.perf_counter()
    owner = f"storm-{uuid.uuid4().hex[:6]}"
    ledger_url = _fresh_ledger(tmp)
    before = len(clouds.interrupted)
    clouds.interrupt_next_spot(count=interrupt)
    work = _work_flow(_runner(clouds.provisioners_for(owner)), tasks, spot_ok=True)
    try:
        results = work()
    finally:
        clouds.disarm()
    rows = _rows(ledger_url)
    interrupted = len(clouds.interrupted) - before
    completed = [r for r in rows if r.state == "completed"]
    return Outcome(
        scenario="storm",
        tasks=tasks,
        tasks_ok=sum(a == b for a, b in zip(results, [i * i for i in range(tasks)], strict=True)),
        faults_injected=interrupted,
        interruptions=len(Ledger(ledger_url).interruptions()),
        instances_leaked=len(clouds.running_instances(owner_id=owner)),
        rows_expected=interrupted + tasks,
        rows_found=len(rows),
        deadlines_met=_deadlines_met(rows),
        seconds=time.perf_counter() - t0,
        detail=f"completed on: {sorted({r.option for r in completed})}",
    )


def capacity(clouds: Any, tmp: Path, *, tasks: int = 3) -> Outcome:
    """The policy's first two choices are out of capacity; the runner falls back."""
    from prefect_cloudsched.core.catalog import load_catalog
    from prefect_cloudsched.core.needs import TaskNeeds
    from prefect_cloudsched.core.policy import PlacementState, PolicyConfig, decide

    t0 = time.perf_counter()
    owner = f"capacity-{uuid.uuid4().hex[:6]}"
    ledger_url = _fresh_ledger(tmp)
    policy = dict(allowed_clouds=frozenset({"aws"}))
    needs = TaskNeeds(gpus=1, est_runtime=timedelta(minutes=20), deadline=DEADLINE)
    state, refused = PlacementState(), []
    for _ in range(2):
        choice = decide(
            needs,
            load_catalog(),
            now=datetime.now(UTC),
            state=state,
            config=PolicyConfig(**policy),
        ).offer
        refused.append(choice)
        state.block(choice.key, "test")
    fired = clouds.moto.faults_fired
    for offer in refused:
        clouds.stockout(offer, count=10**6)
    try:
        results = _work_flow(
            _runner(clouds.provisioners_for(owner), **policy), tasks, spot_ok=False
        )()
    finally:
        clouds.moto.clear_faults()
    rows = _rows(ledger_url)
    dodged = all(r.offer_key not in {o.key for o in refused} for r in rows)
    return Outcome(
        scenario="capacity",
        tasks=tasks,
        tasks_ok=sum(a == b for a, b in zip(results, [i * i for i in range(tasks)], strict=True))
        if dodged
        else 0,
        faults_injected=clouds.moto.faults_fired - fired,
        interruptions=0,
        instances_leaked=len(clouds.running_instances(owner_id=owner)),
        rows_expected=tasks,
        rows_found=len(rows),
        deadlines_met=_deadlines_met(rows),
        seconds=time.perf_counter() - t0,
        detail=f"refused {[o.key for o in refused]}, ran on {sorted({r.offer_key for r in rows})}",
    )


def throttle(clouds: Any, tmp: Path, *, tasks: int = 3) -> Outcome:
    """Launches answer RequestLimitExceeded after EC2 started the instance."""
    t0 = time.perf_counter()
    owner = f"throttle-{uuid.uuid4().hex[:6]}"
    ledger_url = _fresh_ledger(tmp)
    hits = clouds.moto.token_hits
    clouds.throttle("aws", count=tasks * 2, after=True)
    try:
        work = _work_flow(
            _runner(clouds.provisioners_for(owner), allowed_clouds=frozenset({"aws"})),
            tasks,
            spot_ok=False,
        )
        results = work()
    finally:
        clouds.moto.clear_faults()
    rows = _rows(ledger_url)
    launched = _launched_by(clouds, owner)
    duplicates = len(launched) - len({r.instance_id for r in rows})
    return Outcome(
        scenario="throttle",
        tasks=tasks,
        tasks_ok=sum(a == b for a, b in zip(results, [i * i for i in range(tasks)], strict=True)),
        faults_injected=clouds.moto.token_hits - hits,
        interruptions=0,
        instances_leaked=len(clouds.running_instances(owner_id=owner)) + max(duplicates, 0),
        rows_expected=tasks,
        rows_found=len(rows),
        deadlines_met=_deadlines_met(rows),
        seconds=time.perf_counter() - t0,
        detail=f"instances launched {len(launched)} for {len(rows)} placements",
    )


def _launched_by(clouds: Any, owner: str) -> list[str]:
    from prefect_cloudsched.adapters.provision.base import OWNER_TAG

    found = []
    for instance_id, region in clouds.moto.launched.items():
        model = clouds.moto.backend(region).get_instance(instance_id)
        tags = {t["key"]: t["value"] for t in model.get_tags()}
        if tags.get(OWNER_TAG) == owner:
            found.append(instance_id)
    return found


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

    aws_url, gcp_url, project, owner = sys.argv[1:5]
    aws = AwsProvisioner(AwsSettings(regions=("us-east-1",), ami_per_region={"us-east-1": MOCK_AMI},
                                     endpoint_url=aws_url, owner_id=owner, heartbeat_seconds=0.3,
                                     poll_seconds=0.05, **DUMMY_KEYS))
    gcp = GcpProvisioner(GcpSettings(project=project, zones=("us-central1-a", "us-central1-b",
                                     "us-central1-c", "us-central1-f"), endpoint=gcp_url,
                                     owner_id=owner, heartbeat_seconds=0.3, poll_seconds=0.05))

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
        a, g = on_aws.submit(), on_gcp.submit()
        a.wait(); g.wait()

    doomed()
    """
)


def sigkill(clouds: Any, tmp: Path, *, ttl: float = 2.0, timeout: float = 120.0) -> Outcome:
    """SIGKILL a flow process while its instances run; then ``reap`` must end them."""
    from prefect.settings import PREFECT_API_URL

    from prefect_cloudsched.adapters.provision.reaper import reap

    t0 = time.perf_counter()
    owner = f"sigkill-{uuid.uuid4().hex[:6]}"
    ledger_url = _fresh_ledger(tmp)
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value() or ""),
        "PREFECT_CLOUDSCHED_LEDGER_URL": ledger_url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    args = [clouds.aws_url, clouds.gcp_url, clouds.project, owner]
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_FLOW, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while len(clouds.running_instances(owner_id=owner)) < 2:
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode()[-2000:] if process.stderr else ""
                raise RuntimeError(f"the flow process never started both instances: {error}")
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        if process.stderr:
            process.stderr.close()
    orphans = len(clouds.running_instances(owner_id=owner))
    time.sleep(ttl + 1.5)  # the dead process's heartbeat goes stale
    actions = reap(clouds.provisioners_for(owner).values(), heartbeat_ttl=ttl)
    return Outcome(
        scenario="sigkill",
        tasks=0,
        tasks_ok=0,
        faults_injected=1,
        interruptions=0,
        instances_leaked=len(clouds.running_instances(owner_id=owner)),
        rows_expected=0,
        rows_found=0,
        deadlines_met=True,
        seconds=time.perf_counter() - t0,
        detail=f"{orphans} orphaned by the kill, {sum(a.done for a in actions)} reaped",
    )


SCENARIOS = {"storm": storm, "capacity": capacity, "throttle": throttle, "sigkill": sigkill}


def main(argv: list[str] | None = None) -> int:
    """Run every scenario ``--runs`` times (SIGKILL at most 3) and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    from _common import isolate, write

    home = isolate()
    from prefect.testing.utilities import prefect_test_harness

    from prefect_cloudsched.testing.clouds import MockClouds

    outcomes: list[Outcome] = []
    with (
        prefect_test_harness(server_startup_timeout=120),
        MockClouds(owner_id="fault-suite", heartbeat_seconds=0.5) as clouds,
    ):
        for name, scenario in SCENARIOS.items():
            runs = min(args.runs, 3) if name == "sigkill" else args.runs
            for _ in range(runs):
                outcomes.append(scenario(clouds, home))
                print(outcomes[-1])
    summary: dict[str, dict[str, Any]] = {}
    for name in SCENARIOS:
        mine = [o for o in outcomes if o.scenario == name]
        summary[name] = {
            "runs": len(mine),
            "all_ok": all(o.ok for o in mine),
            "tasks": sum(o.tasks for o in mine),
            "tasks_ok": sum(o.tasks_ok for o in mine),
            "faults_injected": sum(o.faults_injected for o in mine),
            "interruptions_recorded": sum(o.interruptions for o in mine),
            "instances_leaked": sum(o.instances_leaked for o in mine),
            "rows_lost": sum(o.rows_lost for o in mine),
            "median_seconds": sorted(o.seconds for o in mine)[len(mine) // 2],
        }
    lines = [
        "| scenario | runs | tasks ok | faults injected | interruptions recorded | "
        "instances leaked (target 0) | ledger rows lost (target 0) | median s | pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        tasks = f"{s['tasks_ok']}/{s['tasks']}" if s["tasks"] else "n/a"
        lines.append(
            f"| {name} | {s['runs']} | {tasks} | {s['faults_injected']} | "
            f"{s['interruptions_recorded']} | {s['instances_leaked']} | {s['rows_lost']} | "
            f"{s['median_seconds']:.1f} | {'yes' if s['all_ok'] else 'NO'} |"
        )
    details = [f"- {o.scenario}: {o.detail}" for o in outcomes[:: max(1, args.runs)]]
    markdown = "\n".join([*lines, "", "Examples:", *details, ""])
    write(
        "fault_suite",
        {"summary": summary, "runs": [{**asdict(o), "rows_lost": o.rows_lost} for o in outcomes]},
        markdown,
    )
    return 0 if all(s["all_ok"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
