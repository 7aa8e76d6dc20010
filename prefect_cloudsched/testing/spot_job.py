"""A scaled checkpointable job driven through the runtime session the way Prefect retries it.

Used by the live-vs-simulated check (``bench/bench_live_spot.py``) and the session test of
spot control: the body is the replay's job model played in real (scaled) time — it loads
its checkpoint, counts progress as trace time after one change-over, saves a checkpoint
four times per decision tick (where a requested move stops it) and returns once the work is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.errors import MoveRequested, SpotInterrupted
from prefect_cloudsched.prefect import checkpoint
from prefect_cloudsched.runtime.session import Session

LOCATION = "memory://cloudsched-live"
#: Checkpoints per decision tick: a move stops the body within a quarter of a tick.
SAVES_PER_TICK = 4


@dataclass
class JobRun:
    """What one driven job did."""

    done_s: float = 0.0
    finished_s: float = 0.0  # the controller's clock when the body returned
    attempts: int = 0
    bases: list[float] = field(default_factory=list)  # progress each attempt resumed from
    errors: list[str] = field(default_factory=list)  # why each attempt but the last ended


def run_controlled_job(
    session: Session, needs: TaskNeeds, key: str, *, max_attempts: int = 200
) -> JobRun:
    """Submit ``needs`` as one task and run it to completion, retrying moves and losses.

    ``key`` is the task run id (and the checkpoint's key), as under Prefect.
    """
    live = session.spot_live
    clock = live.clock
    work_s = needs.est_runtime.total_seconds() * clock.speed
    run = JobRun()

    def body() -> float:
        state = checkpoint.load(default={"done": 0.0}, key=key, location=LOCATION)
        # the change-over runs from the controller's decision (provisioning is part of it)
        t0, base = live.jobs[key].running_since or clock.now(), state["done"]
        run.bases.append(base)
        while True:
            done = base + max(0.0, clock.now() - t0 - live.change_over_s)
            if done >= work_s:
                checkpoint.clear(key=key, location=LOCATION)
                run.finished_s = clock.now()
                return done
            checkpoint.save({"done": done}, key=key, location=LOCATION)
            time.sleep(live.horizon_s / clock.speed / SAVES_PER_TICK)

    spec = session.submit("train", needs, flow_run_id="run-live", flow_name="live", announce=True)
    for number in range(1, max_attempts + 1):
        run.attempts = number
        attempt = session.place(spec, task_run_id=key, attempt=number)
        try:
            result = session.run(attempt, body)
        except (MoveRequested, SpotInterrupted) as err:
            try:
                session.finish(attempt, err)
            except SpotInterrupted as lost:  # the move was an interruption after all
                err = lost
            run.errors.append(type(err).__name__)
            continue
        try:
            session.finish(attempt, None)
        except SpotInterrupted:  # reclaimed at the very end: the result is lost
            run.errors.append("SpotInterrupted")
            continue
        run.done_s = result
        return run
    raise RuntimeError(f"{key}: not done after {max_attempts} attempts")


__all__ = ["LOCATION", "JobRun", "run_controlled_job"]
