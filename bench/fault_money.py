"""The fault suite's money scenarios: the ledger under faults, and hard caps under overruns and
concurrency. Every figure is measured from the ledger and the flows' own states.

- ``ledger_lock``: another process holds SQLite's write lock for 25 s while a 40-task flow
  runs; rows must reach the database or the journal, and be in the database after the next
  open (issue 11, observation 4: 40 of 40 were lost).
- ``postgres_restart``: the PostgreSQL server restarts while a flow writes its rows.
- ``writers``: 8 processes × 150 tasks at once hold, write and settle against one day cap in
  the ledger (``Ledger.hold_budget``): rows lost and spend ÷ cap.
- ``runtime_overrun``: a hard per-run cap of $0.05, eight 8×H100 tasks
  estimated at 1 s that really run 3 s (the runtime's budget watch stops a running task
  before its cost crosses the cap).
- ``shared_day_cap``: four flow processes started together under one hard day cap (the
  runtime admits through ``Ledger.hold_budget`` and raises the hold while a task runs).
- ``instance_cap``: a hard per-run cap vs 0.2 s GPU tasks on the real provisioners
  (``MockClouds``): the report's spend, task rows + each instance's boot-and-idle row, must
  stay under the cap.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fault_outcome import (
    EST_RUNTIME,
    Outcome,
    Trial,
    cloud_outcome,
    cloud_runner,
    fresh_ledger,
    ledger_rows,
)

#: The issue's figure: another writer holds SQLite's write lock this long.
LEDGER_LOCK_SECONDS = 25.0


def _sleeping_flow(runner: Any, tasks: int, *, sleep_s: float, needs: dict[str, Any]) -> Any:
    """A flow of ``tasks`` tasks with ``needs`` that sleep ``sleep_s`` each, on ``runner``."""
    from prefect import flow, task

    from prefect_cloudsched import requires

    @requires(**needs)
    @task
    def step(i: int) -> int:
        time.sleep(sleep_s)
        return i

    @flow(name=f"fault-money-{uuid.uuid4().hex[:6]}", task_runner=runner)
    def work() -> list[Any]:
        futures = step.map(range(tasks))
        futures.wait()
        return [f.state for f in futures]

    return work


def _runner(policy: Any = None) -> Any:
    from prefect_cloudsched import CloudSchedTaskRunner

    return CloudSchedTaskRunner(max_workers=8, policy=policy, label_task_runs=False)


def _money_outcome(**measured: Any) -> Outcome:
    """An outcome of a money scenario: none starts an instance or has a deadline to meet."""
    return Outcome(interruptions=0, instances_leaked=0, deadlines_met=None, **measured)


ONE_GPU = {"gpus": 1, "gpu_type": "A10G", "est_runtime": timedelta(seconds=1), "spot_ok": False}


def ledger_lock(tmp: Path, backend: str, *, tasks: int = 40, lock_s: float = LEDGER_LOCK_SECONDS):
    """Another writer holds the SQLite write lock for ``lock_s`` while the flow runs."""
    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.testing.ledger_load import hold_sqlite_write_lock

    t0 = time.perf_counter()
    url = fresh_ledger(tmp, backend)
    Ledger(url).dispose()
    database = Path(url.removeprefix("sqlite:///"))
    holder = hold_sqlite_write_lock(database, lock_s)
    locked_at = time.perf_counter()
    states = _sleeping_flow(_runner(), tasks, sleep_s=0.05, needs=ONE_GPU)()
    flow_s = time.perf_counter() - locked_at
    completed = sum(s.is_completed() for s in states)
    pending = Ledger(url, create=False).pending_journal_rows()
    before_replay = len(Ledger(url, create=False).placements())
    holder.wait()
    held_s = time.perf_counter() - locked_at
    rows = Ledger(url).placements()  # the next open replays the journal
    return _money_outcome(
        scenario="ledger_lock",
        backend=backend,
        tasks=tasks,
        tasks_ok=completed,
        faults_injected=1,
        rows_expected=completed,
        rows_found=len(rows),
        seconds=time.perf_counter() - t0,
        detail=f"write lock held {held_s:.1f} s; the flow ended after {flow_s:.1f} s with "
        f"{before_replay} row(s) in the database and {pending} in the journal; "
        f"{len(rows)} in the database after the next open",
    )


def postgres_restart(tmp: Path, backend: str, *, tasks: int = 40) -> Outcome:
    """The PostgreSQL server restarts (``pg_ctl restart -m fast``) while rows are written."""
    import sqlalchemy as sa

    from prefect_cloudsched.adapters.ledger import Ledger, placements
    from prefect_cloudsched.testing.postgres import restart_server

    t0 = time.perf_counter()
    url = fresh_ledger(tmp, backend)
    Ledger(url).dispose()
    restarts: list[str] = []

    def restart_after_first_rows() -> None:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    seen = conn.execute(sa.select(sa.func.count()).select_from(placements))
                    count = int(seen.scalar_one())
                if count:
                    restart_server()
                    restarts.append(f"restarted after {count} of {tasks} rows")
                    return
                time.sleep(0.05)
        finally:
            engine.dispose()

    restarter = threading.Thread(target=restart_after_first_rows, daemon=True)
    restarter.start()
    states = _sleeping_flow(_runner(), tasks, sleep_s=0.3, needs=ONE_GPU)()
    restarter.join(timeout=120)
    completed = sum(s.is_completed() for s in states)
    rows = Ledger(url).placements()
    return _money_outcome(
        scenario="postgres_restart",
        backend=backend,
        tasks=tasks,
        tasks_ok=completed,
        faults_injected=len(restarts),
        rows_expected=completed,
        rows_found=len(rows),
        seconds=time.perf_counter() - t0,
        detail=(restarts[0] if restarts else "the server was NOT restarted (no fault)")
        + f"; {len(rows)} of {completed} rows in the ledger",
        error="" if restarts else "no restart happened",
    )


def writers(tmp: Path, backend: str, *, processes: int = 8, tasks: int = 150) -> Outcome:
    """``processes`` × ``tasks`` placements at once against one day cap in the ledger."""
    from prefect_cloudsched.testing.ledger_load import run_writers

    url = fresh_ledger(tmp, backend)
    result = run_writers(
        url,
        processes=processes,
        tasks=tasks,
        day_cap_micro=900_000,
        hold_micro=1_000,
        actual_micro=800,
    )
    return _money_outcome(
        scenario="writers",
        backend=backend,
        tasks=result.tasks,
        tasks_ok=result.admitted + result.refused,
        faults_injected=0,
        rows_expected=result.admitted,
        rows_found=result.rows_found,
        seconds=result.seconds,
        spend_over_cap=result.cap_ratio,
        detail=f"{processes} processes × {tasks} tasks: {result.admitted} admitted, "
        f"{result.refused} refused by the day cap, day spend "
        f"${result.day_spend_micro / 1e6:.6f} of ${result.day_cap_micro / 1e6:.6f}",
    )


def _budget_states(states: list[Any]) -> tuple[int, int, int]:
    """(completed, ended by the budget, other failures) among task states."""
    completed = budget = other = 0
    for state in states:
        if state.is_completed():
            completed += 1
            continue
        message = str(state.message or "")
        try:
            state.result()
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
        if "BudgetExceeded" in message or "would be crossed" in message:
            budget += 1
        else:
            other += 1
    return completed, budget, other


def runtime_overrun(tmp: Path, backend: str, *, tasks: int = 8, cap_usd: float = 0.05):
    """RUNTIME HOOK. Hard per-run cap vs 8×H100 tasks estimated at 1 s that run 3 s."""
    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.core.records import to_micro
    from prefect_cloudsched.prefect.blocks import CloudSchedPolicy

    t0 = time.perf_counter()
    url = fresh_ledger(tmp, backend)
    policy = CloudSchedPolicy(budget_per_run_usd=cap_usd, budget_enforcement="hard")
    needs = {"gpus": 8, "gpu_type": "H100", "est_runtime": timedelta(seconds=1), "spot_ok": False}
    states = _sleeping_flow(_runner(policy), tasks, sleep_s=3.0, needs=needs)()
    completed, budget, other = _budget_states(states)
    rows = Ledger(url).placements()
    spend = sum(r.cost_micro for r in rows)
    return _money_outcome(
        scenario="runtime_overrun",
        backend=backend,
        tasks=tasks,
        tasks_ok=completed + budget,
        faults_injected=tasks,  # every task outruns its estimate 3×
        rows_expected=completed,
        rows_found=sum(r.state == "completed" for r in rows),
        seconds=time.perf_counter() - t0,
        spend_over_cap=spend / to_micro(cap_usd),
        detail=f"{completed} completed, {budget} refused or stopped by the cap, {other} other "
        f"failures; spent ${spend / 1e6:.6f} against a hard cap of ${cap_usd}",
    )


_CAPPED_FLOW = textwrap.dedent(
    """
    import json, sys, time
    from datetime import timedelta
    from prefect import flow, task
    from prefect_cloudsched import CloudSchedTaskRunner, requires
    from prefect_cloudsched.prefect.blocks import CloudSchedPolicy

    cap, tasks, start_at = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

    @requires(gpus=1, gpu_type="A10G", est_runtime=timedelta(seconds=2), spot_ok=False)
    @task
    def step(i: int) -> int:
        time.sleep(2.0)
        return i

    policy = CloudSchedPolicy(budget_per_day_usd=cap, budget_enforcement="hard")

    @flow(task_runner=CloudSchedTaskRunner(max_workers=4, policy=policy, label_task_runs=False))
    def capped() -> list:
        futures = step.map(range(tasks))
        futures.wait()
        return [f.state for f in futures]

    time.sleep(max(0.0, start_at - time.time()))
    states = capped()
    done = sum(s.is_completed() for s in states)
    print(json.dumps({"completed": done, "failed": len(states) - done}), flush=True)
    """
)


def shared_day_cap(
    tmp: Path, backend: str, *, processes: int = 4, tasks: int = 10, cap_usd: float = 0.01
) -> Outcome:
    """RUNTIME HOOK. Four flow processes started together under one hard day cap."""
    from prefect.settings import PREFECT_API_URL

    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.core.budget import DAY_CAP
    from prefect_cloudsched.core.records import to_micro
    from prefect_cloudsched.testing.ledger_load import run_together

    t0 = time.perf_counter()
    url = fresh_ledger(tmp, backend)
    Ledger(url).dispose()
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value() or ""),
        "PREFECT_CLOUDSCHED_LEDGER_URL": url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    start_at = str(time.time() + 15.0)  # after every process imported Prefect
    reports = run_together(
        [sys.executable, "-c", _CAPPED_FLOW, str(cap_usd), str(tasks), start_at],
        processes,
        what="a capped flow process",
        timeout=600,
        env=env,
    )
    ledger = Ledger(url)
    spend = ledger.window_spend(datetime.now(UTC))[DAY_CAP]
    rows = ledger.placements()
    completed = sum(r["completed"] for r in reports)
    return _money_outcome(
        scenario="shared_day_cap",
        backend=backend,
        tasks=processes * tasks,
        tasks_ok=processes * tasks,  # a refusal is the cap working, not a failure
        faults_injected=0,
        rows_expected=completed,
        rows_found=sum(r.state == "completed" for r in rows),
        seconds=time.perf_counter() - t0,
        spend_over_cap=spend / to_micro(cap_usd),
        detail=f"{processes} processes started together: {completed} tasks completed, "
        f"{sum(r['failed'] for r in reports)} refused; day spend ${spend / 1e6:.6f} against "
        f"a hard day cap of ${cap_usd}",
    )


#: The instance-cap scenario's launch timeout (what a hard cap holds per launch) and its cap
#: in instance minutes: four launches at once need four held minutes, so three start.
INSTANCE_CAP_LAUNCH_TIMEOUT_S = 30.0
INSTANCE_CAP_MINUTES = 3.5


def instance_cap(clouds: Any, tmp: Path, backend: str, *, tasks: int = 6) -> Outcome:
    """A hard per-run cap vs 0.2 s GPU tasks on real provisioners: the report's spend — task
    rows plus each instance's boot-and-idle row (the clouds' one-minute minimum) — must stay
    under the cap. Task rows alone are a fraction of it; before instances counted against
    caps, every task started and the report showed the cap crossed."""
    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.core.accounting import MIN_BILLED_S, instance_billed_micro
    from prefect_cloudsched.core.catalog import load_catalog
    from prefect_cloudsched.core.instance_time import overhead_records
    from prefect_cloudsched.core.needs import TaskNeeds
    from prefect_cloudsched.core.policy import PolicyConfig, decide
    from prefect_cloudsched.core.records import to_micro
    from prefect_cloudsched.prefect.blocks import CloudSchedPolicy

    trial = Trial.start(tmp, backend, "instance_cap")
    needs = TaskNeeds(gpus=1, est_runtime=EST_RUNTIME)
    offer = decide(needs, load_catalog(), now=datetime.now(UTC), config=PolicyConfig()).offer
    minute = instance_billed_micro(to_micro(offer.usd_per_hour), MIN_BILLED_S, offer.option)
    cap_usd = round(INSTANCE_CAP_MINUTES * minute / 1e6, 6)
    policy = CloudSchedPolicy(budget_per_run_usd=cap_usd, budget_enforcement="hard")
    provisioners = clouds.provisioners_for(
        trial.owner, launch_timeout_seconds=INSTANCE_CAP_LAUNCH_TIMEOUT_S
    )
    work = _sleeping_flow(
        cloud_runner(provisioners, policy),
        tasks,
        sleep_s=0.2,
        needs={"gpus": 1, "est_runtime": EST_RUNTIME},
    )
    submitted = datetime.now(UTC)
    states = work()
    completed = sum(s.is_completed() for s in states)
    refused = sum("BudgetExceeded" in str(s.message or "") for s in states if s.is_failed())
    rows = ledger_rows(trial.ledger_url)
    overhead = overhead_records(rows, Ledger(trial.ledger_url).instances())
    task_spend = sum(r.cost_micro for r in rows)
    spend = task_spend + sum(r.cost_micro for r in overhead)
    return cloud_outcome(
        clouds,
        trial,
        "instance_cap",
        rows,
        submitted,
        tasks=tasks,
        tasks_ok=completed + refused,  # a refusal is the cap working, not a failure
        faults_injected=0,
        interruptions=0,
        rows_expected=completed,
        spend_over_cap=spend / to_micro(cap_usd),
        detail=f"{completed} completed, {refused} refused by the cap; report spend "
        f"${spend / 1e6:.6f} (task rows ${task_spend / 1e6:.6f} + {len(overhead)} instance "
        f"row(s)) against a hard cap of ${cap_usd} ({INSTANCE_CAP_MINUTES} instance minutes)",
    )
