"""Restrict clouds and regions, and use reservations you already own first.

Run: ``source scripts/_env.sh && python examples/02_policy_and_reservations.py``
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, task

from prefect_cloudsched import CloudSchedTaskRunner, PolicyConfig, override, requires


@requires(
    gpus=1,
    gpu_type="A10G",
    est_runtime=timedelta(hours=1),
    deadline=timedelta(hours=6),
    spot_ok=True,
)
@task
def finetune(step: int) -> int:
    return step


runner = CloudSchedTaskRunner(
    max_workers=4,
    policy=PolicyConfig(
        allowed_clouds=frozenset({"aws"}),
        allowed_regions=frozenset({"us-east-1", "us-west-2"}),
        max_spot_band="10-15%",  # no spot pool with worse interruption odds
    ),
    reserved={"aws/us-east-1/g5.xlarge": 1},  # one reserved g5.xlarge: used first, $0 marginal
)


@flow(task_runner=runner)
def policy_flow() -> list[int]:
    steps = finetune.map(range(3))
    with override(spot_ok=False):  # this one submission must not be interrupted
        final = finetune.submit(99)
    return [*steps.result(), final.result()]


if __name__ == "__main__":
    print(policy_flow())
