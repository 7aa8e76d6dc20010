"""Executors run a task's body "on" its placement; the local one runs it in this process.

The runner hands an executor a zero-argument callable (the task body with its parameters
bound) and the :class:`Placement`; the executor returns the result or raises. A Dask
executor ships the callable to the worker that lives on the placement's instance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.core.policy import Decision

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Placement:
    """A decision plus the instance (if any) that was started or reused for it."""

    decision: Decision
    run_id: str
    task_run_id: str
    attempt: int
    instance_id: str | None = None


@runtime_checkable
class Executor(Protocol):
    """Runs task bodies on their placements.

    ``runs_on_instance``: bodies run on the provisioned instances (Dask workers there).
    An executor that runs them in this process must not be combined with provisioners:
    the instance would be started and billed while the work happens here.
    """

    runs_on_instance: bool

    def start(self) -> None:
        """Acquire resources (clients, clusters). Called from the runner's ``__enter__``."""

    def stop(self) -> None:
        """Release everything. Called from the runner's ``__exit__``, also on failure."""

    def run(self, call: Callable[[], R], placement: Placement) -> R:
        """Run ``call`` on ``placement`` and return its result."""
        ...

    def startup_script(self, offer: Offer, run_id: str) -> str | None:
        """Boot script an instance for ``offer`` needs (``None`` = nothing to start)."""
        ...

    def attach(self, handle: InstanceHandle, placement: Placement) -> None:
        """An instance for ``placement`` is running (e.g. wait for its worker to join)."""

    def detach(self, handle: InstanceHandle) -> None:
        """The instance is about to be released."""


class LocalExecutor:
    """Runs the body in the calling thread: the embedded default (accounting only)."""

    name = "local"
    runs_on_instance = False

    def start(self) -> None:
        """Nothing to acquire."""

    def stop(self) -> None:
        """Nothing to release."""

    def run(self, call: Callable[[], R], placement: Placement) -> R:
        """Call it here."""
        return call()

    def startup_script(self, offer: Offer, run_id: str) -> str | None:
        """Nothing runs on the instance: the body runs here."""
        return None

    def attach(self, handle: InstanceHandle, placement: Placement) -> None:
        """Nothing to wait for."""

    def detach(self, handle: InstanceHandle) -> None:
        """Nothing to tear down."""

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, LocalExecutor)

    def __hash__(self) -> int:
        return hash(LocalExecutor)
