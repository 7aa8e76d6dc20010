"""Who hears what a run does: log lines and events, without the runtime knowing Prefect.

The session calls a :class:`RunObserver`; the Prefect layer passes one that writes to the
task run's log and emits ``cloudsched.*`` events, tests and other orchestrators pass their
own (or none: :class:`LoggingObserver` writes to the standard ``logging`` module).
"""

from __future__ import annotations

import logging
from typing import Protocol

from prefect_cloudsched.core.budget import Overrun
from prefect_cloudsched.core.policy import Decision

_logger = logging.getLogger("prefect_cloudsched.runtime")


class RunObserver(Protocol):
    """What a flow run's session reports as it places, runs and finishes attempts."""

    def log(self, message: str, level: str = "info") -> None:
        """A line for the task run's log (``level``: a ``logging`` method name)."""

    def decided(self, decision: Decision, *, task: TaskIds, attempt: int) -> None:
        """An attempt starts on ``decision`` (the placement that really started)."""

    def interrupted(
        self, decision: Decision, *, task: TaskIds, instance_id: str | None, wasted_usd: float
    ) -> None:
        """A spot instance was reclaimed under an attempt."""

    def budget_exceeded(
        self, overrun: Overrun, *, refused: bool, decision: Decision, task: TaskIds
    ) -> None:
        """A placement hit (hard, refused) or crossed (soft) a budget cap."""

    def rows_deferred(self, count: int, detail: str) -> None:
        """Ledger rows could not be written now and were kept in the local journal."""


class TaskIds(Protocol):
    """The identifiers an observer needs to relate a report to its task run."""

    task_name: str
    flow_run_id: str
    task_run_id: str


class LoggingObserver:
    """The default outside Prefect: every report becomes a standard ``logging`` line."""

    def log(self, message: str, level: str = "info") -> None:
        getattr(_logger, level)(message)

    def decided(self, decision: Decision, *, task: TaskIds, attempt: int) -> None:
        _logger.debug("%s attempt %d: %s", task.task_name, attempt, decision.explanation())

    def interrupted(
        self, decision: Decision, *, task: TaskIds, instance_id: str | None, wasted_usd: float
    ) -> None:
        _logger.warning("%s: spot instance %s reclaimed", task.task_name, instance_id)

    def budget_exceeded(
        self, overrun: Overrun, *, refused: bool, decision: Decision, task: TaskIds
    ) -> None:
        _logger.warning("%s: budget %s", task.task_name, overrun.describe())

    def rows_deferred(self, count: int, detail: str) -> None:
        _logger.warning("%d ledger row(s) deferred to the local journal: %s", count, detail)


__all__ = ["LoggingObserver", "RunObserver", "TaskIds"]
