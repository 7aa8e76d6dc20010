"""Executors: where a task's body actually runs (local thread, or a Dask worker)."""

from prefect_cloudsched.adapters.execute.base import Executor, LocalExecutor, Placement

__all__ = ["Executor", "LocalExecutor", "Placement"]
