"""The rules applied around ``decide()`` before a placement starts. Pure.

``decide()`` answers "which offer is cheapest for these needs now". A real run adds rules on
top: a task retried after spot losses stops asking for spot, a run keeps its spot share
under the policy's cap, a hard budget refuses (or falls back to the cheapest offer), and an
offer that fails to start is blocked and the task re-decided. They live here, not in the
runner, so the simulator can apply the very same rules to a replayed trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from prefect_cloudsched.core.budget import BudgetExceeded, BudgetTracker, Overrun
from prefect_cloudsched.core.catalog import PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy.placement import Decision
from prefect_cloudsched.core.records import to_micro
from prefect_cloudsched.errors import NoFeasibleOffer

#: Offers tried per attempt before giving up (each failed start blocks its offer).
MAX_FALLBACKS = 6

Started = TypeVar("Started")


class Redecide(Protocol):
    """``decide()`` for these needs in the run's current state (``any_spot_band``: lift the
    policy's spot-band limit, for the budget's cheapest fallback)."""

    def __call__(self, needs: TaskNeeds, *, any_spot_band: bool = False) -> Decision: ...


def needs_for_attempt(needs: TaskNeeds, attempt: int, spot_retries: int) -> TaskNeeds:
    """The needs of attempt ``attempt`` (1-based): no spot once the spot retries are used.

    The chain of retries after spot interruptions must end; the attempt after the last
    granted spot retry runs on capacity that cannot be reclaimed.
    """
    if attempt > 1 and attempt > spot_retries and needs.spot_ok:
        return needs.merged({"spot_ok": False})
    return needs


@dataclass(frozen=True, slots=True)
class Admission:
    """What admission let through: the decision to start and its budget hold.

    ``to_report`` are soft-cap overruns seen for the first time in this run (they are
    announced once, the placement still runs).
    """

    decision: Decision
    hold: int | None = None
    to_report: tuple[Overrun, ...] = ()


def admit(
    decision: Decision,
    needs: TaskNeeds,
    budget: BudgetTracker | None,
    redecide: Redecide,
    *,
    task_name: str,
    floor: Callable[[Decision], int] | None = None,
) -> Admission:
    """Apply the spot share and the budget caps to ``decision``.

    ``floor`` gives the least a decision commits to once started whatever its estimate
    (micro-dollars; the runtime's instance launch: boot allowance and the cloud's minimum);
    the hold is never below it.

    Raises:
        BudgetExceeded: a hard cap refuses the placement, even on the cheapest fallback.
    """
    if budget is None:
        return Admission(decision)
    spot_ok = budget.spot_allowed()
    if decision.offer.option is PurchaseOption.SPOT and not spot_ok:
        decision = _with_reason(
            fell_back(decision, redecide(needs.merged({"spot_ok": False}))),
            f"spot share cap {budget.policy.spot_max_share:.0%} reached: on-demand",
        )
    least = floor or (lambda _: 0)
    hold, overruns = budget.admit(to_micro(decision.expected_cost), least(decision))
    if hold is None and budget.policy.fallback_cheapest:
        relaxed = needs.merged(
            {"deadline": None} if spot_ok else {"deadline": None, "spot_ok": False}
        )
        cheaper = redecide(relaxed, any_spot_band=True)
        if cheaper.expected_cost < decision.expected_cost:
            hold, fallback_overruns = budget.admit(to_micro(cheaper.expected_cost), least(cheaper))
            if hold is not None:
                overruns = fallback_overruns
                decision = _with_reason(
                    fell_back(decision, cheaper),
                    f"budget: cheapest fallback (deadline risk accepted) instead of "
                    f"{decision.offer.describe()}",
                )
    if hold is None:
        raise BudgetExceeded(task_name, overruns[0])
    budget.count_placement(spot=decision.offer.option is PurchaseOption.SPOT)
    return Admission(decision, hold, tuple(budget.first_report(overruns)))


class OfferUnavailable(Exception):
    """An offer could not start (capacity, quota, a reservation already taken): re-decide."""


def start_with_fallback(
    decision: Decision,
    needs: TaskNeeds,
    start: Callable[[Decision], Started],
    redecide: Callable[[TaskNeeds], Decision],
    *,
    what: str,
    blocked: Callable[[], object],
    tries: int = MAX_FALLBACKS,
) -> Started:
    """Start ``decision``; when its offer is unavailable, re-decide and try the next one.

    ``start`` raises :class:`OfferUnavailable` for an offer that cannot start now (it has
    blocked the offer in the run's state, so the next ``redecide`` avoids it).

    Raises:
        NoFeasibleOffer: ``tries`` offers in a row could not start.
    """
    first = decision
    for _ in range(tries):
        try:
            return start(decision)
        except OfferUnavailable:
            decision = fell_back(first, redecide(needs))
    raise NoFeasibleOffer(f"{what}: every fallback offer failed to start; blocked: {blocked()}")


def fell_back(first: Decision, instead: Decision) -> Decision:
    """``instead``, marked as run in place of ``first`` (the report explains a dearer row by
    it); the mark keeps the very first choice across several fallbacks."""
    origin = first.fell_back_from or first.offer.key
    if instead.offer.key == origin:
        return instead
    return replace(instead, fell_back_from=origin)


def _with_reason(decision: Decision, reason: str) -> Decision:
    return replace(decision, reasons=(*decision.reasons, reason))


__all__ = [
    "MAX_FALLBACKS",
    "Admission",
    "OfferUnavailable",
    "Redecide",
    "admit",
    "fell_back",
    "needs_for_attempt",
    "start_with_fallback",
]
