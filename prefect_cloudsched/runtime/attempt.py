"""The two records the runtime passes around: a submitted task and one attempt of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prefect_cloudsched.adapters.execute.base import Placement
from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import Decision

if TYPE_CHECKING:
    from prefect_cloudsched.runtime.shared import MapBatch, SharedInstance


@dataclass(slots=True)
class TaskSpec:
    """One submitted task: what it needs and what was decided for it at submission.

    ``announce``: the task declared its needs (or the runner labels every task), so each
    attempt logs its choice and emits a decided event; undeclared tasks "run as before".
    """

    task_name: str
    needs: TaskNeeds
    decision: Decision
    submitted_at: datetime
    flow_run_id: str
    flow_name: str
    announce: bool = True
    batch: MapBatch | None = None
    batch_index: int = -1


@dataclass(slots=True, eq=False)  # identity: the budget watch keeps a set of them
class Attempt:
    """One run of a task body on one placement (a Prefect retry is a new attempt)."""

    spec: TaskSpec
    placement: Placement
    handle: InstanceHandle | None
    started_at: datetime
    t0: float
    hold: int | None = None
    shared: SharedInstance | None = None
    #: Set by the budget watch when it stopped the attempt before a hard cap was crossed.
    stopped_by: BaseException | None = None
    #: ``perf_counter()`` when the instance was released early (billing ends there).
    stopped_at: float | None = None
    released: bool = False
    #: Which reservation paid for a reserved placement (``RESERVATION_SOURCES``).
    reservation_source: str | None = None

    def billed_seconds(self, now: float) -> float:
        """Instance time billed for this attempt: until now, or until it was stopped."""
        end = now if self.stopped_at is None else min(now, self.stopped_at)
        return max(0.0, end - self.t0)

    # what an observer needs to relate a report to the task run (see ``TaskIds``)
    @property
    def task_name(self) -> str:
        return self.spec.task_name

    @property
    def flow_run_id(self) -> str:
        return self.spec.flow_run_id

    @property
    def task_run_id(self) -> str:
        return self.placement.task_run_id

    @property
    def decision(self) -> Decision:
        return self.placement.decision


__all__ = ["Attempt", "TaskSpec"]
