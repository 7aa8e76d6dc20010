"""``decide()`` in one flow run's state, and the memo that makes a ``.map()`` decide once."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime

from prefect_cloudsched.core.catalog import Catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import Decision, PlacementState, PolicyConfig, decide

#: Decisions remembered per run for identical needs (see :meth:`RunDecisions.fresh`).
MEMO_SIZE = 1024


class RunDecisions:
    """The run's catalog, policy and placement state, asked through one door."""

    def __init__(self, catalog: Catalog, policy: PolicyConfig, state: PlacementState) -> None:
        self.catalog = catalog
        self.policy = policy
        self.state = state
        self._memo: dict[tuple[TaskNeeds, int], Decision] = {}
        self._lock = threading.Lock()

    def decide(
        self, needs: TaskNeeds, *, submitted_at: datetime | None = None, any_spot_band: bool = False
    ) -> Decision:
        """``decide()`` in this run's current state (idle reservations, blocked offers)."""
        policy = replace(self.policy, max_spot_band=None) if any_spot_band else self.policy
        return decide(
            needs,
            self.catalog,
            now=datetime.now(UTC),
            submitted_at=submitted_at,
            state=self.state,
            config=policy,
        )

    def fresh(self, needs: TaskNeeds, *, submitted_at: datetime) -> Decision:
        """The decision for a fresh submission, reused for identical needs.

        A ``.map()`` submits many tasks with the same needs; while this run's state (idle
        reservations, interruptions, blocked offers) is unchanged and the deadline is
        relative to submission, ``decide()`` would return the same choice for each, so it
        runs once. An absolute deadline depends on the clock and is always decided afresh.
        """
        if isinstance(needs.deadline, datetime):
            return self.decide(needs, submitted_at=submitted_at)
        key = (needs, self.state.version)
        cached = self._memo.get(key)
        if cached is None:
            cached = self.decide(needs, submitted_at=submitted_at)
            with self._lock:
                if len(self._memo) >= MEMO_SIZE:
                    self._memo.clear()
                self._memo[key] = cached
            return cached
        return replace(cached, decided_at=submitted_at, deadline=needs.deadline_at(submitted_at))


__all__ = ["MEMO_SIZE", "RunDecisions"]
