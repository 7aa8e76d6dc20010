"""The small flow the browser test runs against its server (in a subprocess, like a user)."""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from prefect import flow, task

from prefect_cloudsched import CloudSchedTaskRunner, requires


@task
def prepare(i: int) -> int:
    time.sleep(1)  # long enough to cost a visible fraction of a cent
    return i + 1


@requires(gpus=1, gpu_type="A10G", spot_ok=True, est_runtime=timedelta(hours=1))
@task
def train(x: int) -> int:
    time.sleep(3)
    return x * 2


@flow(name="ui-cost-demo")
def ui_cost_demo() -> int:
    return sum(train.map(prepare.map(range(3))).result())


if __name__ == "__main__":
    runner = CloudSchedTaskRunner(max_workers=4, policy=sys.argv[1])
    state = ui_cost_demo.with_options(task_runner=runner)(return_state=True)
    print(f"FLOW_RUN_ID={state.state_details.flow_run_id}")
    sys.exit(0 if state.is_completed() else 1)
