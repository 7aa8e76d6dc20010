"""The two records the runtime passes around: a submitted task and one attempt of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

from prefect_cloudsched.adapters.execute.base import Placement
from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.accounting import instance_billed_micro
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import Decision
from prefect_cloudsched.core.records import to_micro

if TYPE_CHECKING:
    from prefect_cloudsched.runtime.shared import MapBatch, SharedInstance

R = TypeVar("R")


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
    #: ``perf_counter()`` when this attempt asked a provisioner for its own instance
    #: (``None``: no instance, or a shared one); a budget cap counts the instance from here.
    launch_t0: float | None = None
    #: Seconds the provisioner may keep the instance warm after release (billed too).
    tail_s: float = 0.0
    #: ``perf_counter()`` when its instance was released (the budget stops counting there).
    released_t: float | None = None
    #: A spot-controlled task's move: the region its checkpoint comes from, and what the
    #: transfer costs (``spot_control.egress_usd``), billed by a row of its own.
    checkpoint_from: str | None = None
    egress_micro: int = 0

    def billed_seconds(self, now: float) -> float:
        """Instance time billed for this attempt: until now, or until it was stopped."""
        end = now if self.stopped_at is None else min(now, self.stopped_at)
        return max(0.0, end - self.t0)

    @property
    def counted_from(self) -> float:
        """Where a budget cap starts counting: the launch request, else the task's start."""
        return self.t0 if self.launch_t0 is None else self.launch_t0

    def counted_micro(self, now: float) -> int:
        """What this attempt counts against a budget cap until ``now``.

        The task's charge, or — when it started its own instance — that instance's billed
        time from the launch request (at least the cloud's minimum) plus the warm tail it
        may be kept for: what the report will charge for the instance (its task row and
        its boot-and-idle row), so a hard cap covers both. A move's checkpoint transfer
        counts from the start (it is paid when the state is fetched).
        """
        offer = self.decision.offer
        if self.launch_t0 is None:
            charged = to_micro(offer.usd_per_hour / 3600.0 * self.billed_seconds(now))
            return charged + self.egress_micro
        end = now if self.released_t is None else min(now, self.released_t)
        seconds = max(0.0, end - self.launch_t0) + self.tail_s
        billed = instance_billed_micro(to_micro(offer.usd_per_hour), seconds, offer.option)
        return billed + self.egress_micro

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


@dataclass(slots=True)
class TaskIds:
    """Task identifiers for observer calls made before an attempt exists."""

    task_name: str
    flow_run_id: str
    task_run_id: str


class AttemptRunner(Protocol):
    """What ``run_and_finish`` needs of a session (typed here, so this module needs no
    import of the session that imports it)."""

    def run(self, attempt: Attempt, call: Callable[[], R]) -> R: ...

    def finish(self, attempt: Attempt, error: BaseException | None) -> None: ...


def run_and_finish(session: AttemptRunner, attempt: Attempt, call: Callable[[], R]) -> R:
    """Run ``call`` on ``attempt``, then finish it with the outcome (its error, else none).

    One place for the place → run → finish protocol's last two steps, so every caller
    finishes an attempt that raised too (the session releases and bills it there).
    """
    try:
        result = session.run(attempt, call)
    except BaseException as err:
        session.finish(attempt, err)
        raise
    session.finish(attempt, None)
    return result


__all__ = ["Attempt", "AttemptRunner", "TaskIds", "TaskSpec", "run_and_finish"]
