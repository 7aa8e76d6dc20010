"""Hard caps stay hard while tasks run: a watch stops an attempt before it crosses one.

Admission holds a placement's worst case (under a hard cap ``overrun_factor`` × its expected
cost, at least the launch floor). A task that runs longer than its estimate
must hold more before it spends more: every tick the watch raises the hold of each running
attempt to what it will have cost a little later; when a hard cap refuses, the attempt is
stopped at the exact second its cost reaches its hold — the instance is released and the
task fails with ``BudgetExceeded`` — so the run's spend never crosses the cap.

An attempt that starts its own instance counts that instance as the report will charge it
(``Attempt.counted_micro``): from the launch request, at least the cloud's minimum, plus
the warm tail. Admission holds at least the launch timeout's worth of it
(:func:`launch_floor_micro`), because a boot cannot be stopped midway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from prefect_cloudsched.adapters.provision.base import Provisioner
from prefect_cloudsched.core.accounting import instance_billed_micro
from prefect_cloudsched.core.budget import (
    BudgetExceeded,
    BudgetPolicy,
    BudgetTracker,
    Overrun,
    month_start,
    spend_windows,
)
from prefect_cloudsched.core.policy import Decision
from prefect_cloudsched.core.records import to_micro
from prefect_cloudsched.runtime.attempt import Attempt

#: Seconds between checks; holds are raised this many ticks ahead of the spend.
TICK_S = 0.05
LOOKAHEAD_TICKS = 4


def launch_floor_micro(
    provisioners: Mapping[str, Provisioner], decision: Decision, budget: BudgetTracker | None
) -> int:
    """The least ``budget`` holds for ``decision`` (micro-dollars; 0 when no provisioner of
    its cloud starts an instance).

    An instance we start is billed from its launch request, at least the cloud's minimum,
    plus its warm tail. Under a hard cap the boot is held at its worst case — the launch
    timeout — since it cannot be stopped midway; a soft cap holds only the minimum.
    """
    provisioner = provisioners.get(decision.offer.cloud)
    if provisioner is None:
        return 0
    hard = budget is None or budget.policy.hard
    boot = provisioner.launch_timeout_seconds if hard else 0.0
    seconds = boot + provisioner.warm_seconds
    offer = decision.offer
    return instance_billed_micro(to_micro(offer.usd_per_hour), seconds, offer.option)


def open_budget(policy: BudgetPolicy | None, ledger: object) -> BudgetTracker | None:
    """This run's budget view.

    Day and month caps are shared by every process that writes to the ledger, so with a
    ledger that holds budgets (``Ledger.hold_budget``) they are checked and held there, in
    one locked transaction per admission; otherwise the day's spend is read once, here.
    """
    if policy is None or (not policy.caps_micro() and policy.spot_max_share >= 1):
        return None
    if policy.window_caps_micro() and hasattr(ledger, "hold_budget"):
        return SharedWindowBudget(policy, ledger)
    today = month = 0
    if policy.needs_history:
        now = datetime.now(UTC)
        today, month = spend_windows(ledger.placements(since=month_start(now)), now)  # type: ignore[attr-defined]
    return BudgetTracker(policy, spent_today_micro=today, spent_month_micro=month)


class SharedWindowBudget(BudgetTracker):
    """The run cap in memory; the day and month caps held in the ledger for all processes.

    Every admission also takes a ledger hold (refused when a hard cap would be crossed by
    what every process has spent or holds); the watch raises it ahead of the spend, in
    steps of half its size so a long task does not lock the database every tick.
    """

    def __init__(self, policy: BudgetPolicy, ledger: object) -> None:
        super().__init__(policy, shared_windows=True)
        self._ledger = ledger
        self._windows = policy.window_caps_micro()
        self._in_ledger: dict[int, tuple[int, int]] = {}  # our hold -> (ledger hold, amount)
        self.run_id = ""

    def bind_run(self, run_id: str) -> None:
        if not self.run_id:
            self.run_id = run_id

    def admit(self, expected_micro: int, floor_micro: int = 0) -> tuple[int | None, list[Overrun]]:
        hold, overruns = super().admit(expected_micro, floor_micro)
        if hold is None:
            return None, overruns
        amount = self.hold_for(expected_micro, floor_micro)  # the run cap's hold, for all too
        try:
            result = self._ledger.hold_budget(  # type: ignore[attr-defined]
                self._windows, amount, self.run_id or "unknown", hard=self.policy.hard
            )
        except BaseException:
            super().release(hold)
            raise
        # the ledger knows amounts only: label its overruns like the run cap's
        reason = self.hold_reason(expected_micro, floor_micro)
        shared = [
            replace(o, expected_cost_micro=expected_micro, hold_reason=reason)
            for o in result.overruns
        ]
        if result.refused:
            super().release(hold)
            return None, [*overruns, *shared]
        with self._lock:
            self._in_ledger[hold] = (result.hold_id, amount)
        return hold, [*overruns, *shared]

    def extend(self, hold: int, amount_micro: int) -> list[Overrun]:
        with self._lock:
            entry = self._in_ledger.get(hold)
        if entry is not None and amount_micro > entry[1]:
            hold_id, held = entry
            ahead = max(amount_micro, held + held // 2)
            hard = self.policy.hard
            overruns = self._ledger.extend_hold(hold_id, ahead, self._windows, hard=hard)  # type: ignore[attr-defined]
            if overruns and hard and ahead > amount_micro:
                ahead = amount_micro
                overruns = self._ledger.extend_hold(hold_id, ahead, self._windows, hard=hard)  # type: ignore[attr-defined]
            if overruns and hard:  # found while the task runs: it is stopped, not refused
                return [replace(o, running=True) for o in overruns]
            with self._lock:
                self._in_ledger[hold] = (hold_id, ahead)
        return super().extend(hold, amount_micro)

    def shared_hold_id(self, hold: int | None) -> int | None:
        """The ledger's id of ``hold`` (the placement row points at it)."""
        with self._lock:
            entry = self._in_ledger.get(hold) if hold is not None else None
        return entry[0] if entry else None

    def release(self, hold: int | None) -> None:
        super().release(hold)
        hold_id = self._pop(hold)
        if hold_id is not None:
            self._ledger.release_hold(hold_id)  # type: ignore[attr-defined]

    def settle(self, hold: int | None, actual_micro: int) -> None:
        super().settle(hold, actual_micro)
        hold_id = self._pop(hold)
        if hold_id is not None:
            self._ledger.settle_hold(hold_id, actual_micro)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Release what this run still holds (the process is ending)."""
        if self.run_id:
            self._ledger.release_run_holds(self.run_id)  # type: ignore[attr-defined]

    def _pop(self, hold: int | None) -> int | None:
        with self._lock:
            entry = self._in_ledger.pop(hold, None) if hold is not None else None
        return entry[0] if entry else None


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
        wanted = attempt.counted_micro(now + LOOKAHEAD_TICKS * TICK_S)
        overruns = self._budget.extend(attempt.hold, wanted)
        if not overruns:
            return
        # bill no more than the hold (one micro-dollar kept for rounding): stop at the
        # second the counted cost reaches it, if that is earlier than now
        held_usd = (self._budget.held(attempt.hold) - 1) / 1_000_000
        stop_after = max(0.0, held_usd / per_second - attempt.tail_s)
        attempt.stopped_at = max(attempt.t0, min(now, attempt.counted_from + stop_after))
        with self._lock:
            self._running.discard(attempt)
        self._on_stop(attempt, BudgetExceeded(attempt.task_name, overruns[0]))


__all__ = ["BudgetWatch", "SharedWindowBudget", "open_budget"]
