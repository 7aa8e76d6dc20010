"""The smallest useful flow: two kinds of task, placed and accounted.

Run: ``source scripts/_env.sh && python examples/01_first_flow.py && prefect-cloudsched report``
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, task

from prefect_cloudsched import CloudSchedTaskRunner, requires


@requires(
    gpus=1,
    gpu_type="L4",
    est_runtime=timedelta(minutes=20),
    deadline=timedelta(hours=2),
    spot_ok=True,
)
@task
def embed(shard: int) -> int:
    return sum(i * i for i in range(shard * 10_000))


@task(tags=["cpu:2", "mem:4Gi"])  # the tag shorthand works too
def combine(parts: list[int]) -> int:
    return sum(parts)


@flow(task_runner=CloudSchedTaskRunner(max_workers=4))
def first_flow(shards: int = 6) -> int:
    parts = embed.map(range(shards))
    return combine.submit(parts).result()


if __name__ == "__main__":
    print(first_flow())
