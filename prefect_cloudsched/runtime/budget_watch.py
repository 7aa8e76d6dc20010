"""Hard caps stay hard while tasks run: a watch stops an attempt before it crosses one.

Admission holds a placement's expected cost. A task that runs longer than its estimate
must hold more before it spends more: every tick the watch raises the hold of each running
attempt to what it will have cost a little later; when a hard cap refuses, the attempt is
stopped at the exact second its cost reaches its hold — the instance is released and the
task fails with ``BudgetExceeded`` — so the run's spend never crosses the cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from prefect_cloudsched.core.budget import (
    BudgetExceeded,
    BudgetPolicy,
    BudgetTracker,
    month_start,
    spend_windows,
)
from prefect_cloudsched.core.records import to_micro
from prefect_cloudsched.runtime.attempt import Attempt

#: Seconds between checks; holds are raised this many ticks ahead of the spend.
TICK_S = 0.05
LOOKAHEAD_TICKS = 4


def open_budget(policy: BudgetPolicy | None, ledger: object) -> BudgetTracker | None:
    """This run's budget view; the ledger's day/month spend is read once, here."""
    if policy is None or (not policy.caps_micro() and policy.spot_max_share >= 1):
        return None
    today = month = 0
    if policy.needs_history:
        now = datetime.now(UTC)
        today, month = spend_windows(ledger.placements(since=month_start(now)), now)  # type: ignore[attr-defined]
    return BudgetTracker(policy, spent_today_micro=today, spent_month_micro=month)


class BudgetWatch:
    """Raises the holds of running attempts ahead of their spend; stops one a cap refuses."""

    def __init__(
        self, budget: BudgetTracker, on_stop: Callable[[Attempt, BudgetExceeded], None]
    ) -> None:
        self._budget = budget
        self._on_stop = on_stop
        self._running: set[Attempt] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.enabled = budget.policy.hard and bool(budget.policy.caps_micro())

    def add(self, attempt: Attempt) -> None:
        if not self.enabled or attempt.hold is None:
            return
        with self._lock:
            self._running.add(attempt)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="cloudsched-budget-watch", daemon=True
                )
                self._thread.start()

    def remove(self, attempt: Attempt) -> None:
        with self._lock:
            self._running.discard(attempt)

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._closed.wait(TICK_S):
            with self._lock:
                running = list(self._running)
            now = time.perf_counter()
            for attempt in running:
                if attempt.stopped_by is None:
                    self.check(attempt, now)

    def check(self, attempt: Attempt, now: float) -> None:
        """Raise ``attempt``'s hold ahead of its spend, or stop it at its hold."""
        offer = attempt.decision.offer
        per_second = offer.usd_per_hour / 3600.0
        if per_second <= 0 or attempt.hold is None:
            return
        ahead = now - attempt.t0 + LOOKAHEAD_TICKS * TICK_S
        wanted = to_micro(per_second * ahead)
        overruns = self._budget.extend(attempt.hold, wanted)
        if not overruns:
            return
        # bill no more than the hold (one micro-dollar kept for rounding): stop at the
        # second the cost reaches it, if that is earlier than now
        held_usd = (self._budget.held(attempt.hold) - 1) / 1_000_000
        stop_after = max(0.0, held_usd / per_second)
        attempt.stopped_at = min(now, attempt.t0 + stop_after)
        with self._lock:
            self._running.discard(attempt)
        self._on_stop(attempt, BudgetExceeded(attempt.task_name, overruns[0]))


__all__ = ["BudgetWatch", "open_budget"]
