"""The trivial mapped flow the Dask benchmarks time (shared by bench_dask and bench_remote)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task


@task
def trivial(x: int) -> int:
    """The body: as cheap as a task gets, so only the runner's overhead is measured."""
    return x + 1


def make_flow(runner: Any, name: str) -> Any:
    """A flow mapping ``trivial`` over ``range(n)`` on ``runner``; returns the sum."""

    @flow(name=name, task_runner=runner)
    def mapped(n: int) -> int:
        return sum(trivial.map(range(n)).result())

    return mapped
