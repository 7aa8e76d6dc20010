"""Tasks of one ``.map()`` packed onto shared instances when that is cheaper than one each.

A ``.map()`` of GPU tasks is the queue the packing program was written for: four 1-GPU
tasks can share one 4-GPU instance, or an idle reserved host, for less than four 1-GPU
instances. The runner opens a :class:`MapBatch` around ``.map()``; each submission joins it
with the decision ``decide()`` made for it alone. The first member that starts waits for the
map to finish submitting, then packs the whole batch once with
:func:`~prefect_cloudsched.core.planning.packing.pack_tasks`; if packing beats one instance per
task, every member runs on its bin's :class:`SharedInstance`, otherwise on its own decision.

Billing stays exact: a member is charged its share of the instance (its GPUs, or vCPUs,
over the instance's) for the time it ran, and the member that leaves last also pays what
the instance cost beyond those shares (idle time between members), so the ledger sums to
the instance's bill.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from prefect_cloudsched.core.accounting import charge_micro, member_share
from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import Decision
from prefect_cloudsched.core.policy.admission import OfferUnavailable

#: Seconds a starting member waits for its ``.map()`` to finish submitting.
CLOSE_WAIT_S = 60.0

Packer = Callable[[Sequence[Any]], Any]


class SharedInstance:
    """One instance several tasks of a batch run on side by side; started once, released once."""

    def __init__(self, offer: Offer, size: int, expected_cost: float, reason: str) -> None:
        self.offer = offer
        self.size = size
        self.expected_each = expected_cost / size
        self.reason = reason
        self._lock = threading.Lock()
        self._claimed = False
        self._failed = False
        self._handle: Any = None
        self._left = 0
        self._t0 = 0.0
        self._charged_micro = 0

    def claim(self, start: Callable[[], Any]) -> Any:
        """The instance, started by the first member that claims it.

        Raises:
            OfferUnavailable: the instance could not start (every member then falls back
                to its own placement); a start that fails otherwise re-raises for the
                member that tried and is ``OfferUnavailable`` for the others.
        """
        with self._lock:
            if not self._claimed:
                self._claimed, self._failed = True, True
                self._handle = start()
                self._failed = False
                self._t0 = time.perf_counter()
            if self._failed:
                raise OfferUnavailable(self.offer.key)
            return self._handle

    def share(self, needs: TaskNeeds) -> float:
        """The fraction of the instance one member occupies (the accounting model's)."""
        return member_share(self.offer, needs.gpus, needs.cpus)

    def leave(self, needs: TaskNeeds, runtime_s: float) -> tuple[int, bool]:
        """Charge one member; returns its cost in micro-USD and whether it was the last.

        The last member out also pays the instance time no member was charged for (the
        idle tail of a shared instance), so the rows add up to what the cloud bills.
        """
        own = charge_micro(self.offer, runtime_s, self.share(needs))
        with self._lock:
            self._left += 1
            self._charged_micro += own
            last = self._left >= self.size
            if last:
                bill = charge_micro(self.offer, time.perf_counter() - self._t0)
                own += max(0, bill - self._charged_micro)
        return own, last

    def decision_for(self, alone: Decision) -> Decision:
        """The member's decision: this instance, with its own alone choice as the runner-up."""
        return replace(
            alone,
            offer=self.offer,
            expected_cost=self.expected_each,
            runner_up=alone.offer,
            runner_up_cost=alone.expected_cost,
            reasons=(*alone.reasons, self.reason),
            shared_by=self.size,
        )


class MapBatch:
    """The members of one ``.map()`` call, packed together when the first of them starts."""

    def __init__(self, pack: Packer) -> None:
        self._pack = pack
        self._members: list[tuple[TaskNeeds, datetime]] = []
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._plan: dict[int, SharedInstance] | None = None
        self.summary = ""

    def add(self, needs: TaskNeeds, submitted_at: datetime) -> int:
        """Register one submission; returns its index in the batch."""
        with self._lock:
            self._members.append((needs, submitted_at))
            return len(self._members) - 1

    def close(self) -> None:
        """The ``.map()`` call has submitted every member."""
        self._closed.set()

    def instance_for(self, index: int) -> SharedInstance | None:
        """The shared instance of member ``index``, or ``None`` to run on its own decision."""
        self._closed.wait(CLOSE_WAIT_S)
        with self._lock:
            if self._plan is None:
                self._plan = self._make_plan()
            return self._plan.get(index)

    def _make_plan(self) -> dict[int, SharedInstance]:
        from prefect_cloudsched.core.planning.packing import PackTask

        if len(self._members) < 2:
            return {}
        tasks = [PackTask(str(i), needs, at) for i, (needs, at) in enumerate(self._members)]
        try:
            result = self._pack(tasks)
        except Exception as err:  # packing is an optimisation: never a reason to fail a task
            self.summary = f"not packed: packing failed ({err})"
            return {}
        packed = [b for b in result.bins if len(b.task_ids) > 1]
        if result.status not in ("optimal", "feasible") or not packed or result.saving <= 0:
            self.summary = f"not packed ({result.status}): one instance per task is cheapest"
            return {}
        self.summary = (
            f"packed {len(self._members)} tasks onto {len(result.bins)} instance(s): expected "
            f"${result.cost:.4f} vs ${result.alone_cost:.4f} one instance each"
        )
        plan: dict[int, SharedInstance] = {}
        for packed_bin in result.bins:
            size = len(packed_bin.task_ids)
            reason = (
                f"packed: shares one {packed_bin.offer.describe()} with {size - 1} other "
                f"task(s) of this map; {self.summary}"
                if size > 1
                else f"packing: {self.summary}"
            )
            shared = SharedInstance(packed_bin.offer, size, packed_bin.cost, reason)
            for task_id in packed_bin.task_ids:
                plan[int(task_id)] = shared
        return plan


__all__ = ["MapBatch", "SharedInstance"]
