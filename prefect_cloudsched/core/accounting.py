"""How money is counted: the one accounting model of decisions, packing, rows, report, simulator.

Written down for users in docs/concepts.md ("How money is counted"). In short:

* **Rate.** A task is charged its offer's hourly rate: the list price for on-demand and spot,
  and for a reservation its *amortised* commitment rate (the 1-yr price spread over the
  term's hours, ``Offer.usd_per_hour`` of a RESERVED offer) — the rate the capacity plan
  bought it at.
* **Instance minimum** (:func:`billed_seconds`): AWS and GCE bill an on-demand or spot
  instance per second with a one-minute minimum; a reservation is paid by its commitment.
  The simulator's instance runs and the report's instance rows (boot and idle) apply it,
  and a hard budget cap counts it (:func:`instance_billed_micro`): an instance we start is
  counted against the cap from its launch request, at least its minimum, so the cap holds
  for what the report shows, not only for the task rows.
* **Charge** (:func:`charge_usd`): rate × seconds × the share of the instance the task held
  (1 alone; its GPUs, or vCPUs, over the instance's when it shares one). A ledger row's
  spend, a budget hold's settlement and a simulated job's cost are this charge.
* **Expectation** (:func:`expected_usd`, :func:`spot_expected_cost`): the same rate over the
  estimated hours (spot: with the expected cost of an interruption). ``decide()``'s
  ``expected_cost``, a packed bin's cost and a budget hold are this expectation, so a row
  differs from its decision only by what really happened (runtime, interruptions,
  fallbacks).
* **Marginal cost** (:func:`marginal_cost`) ranks offers and is never reported as spend: an
  idle reservation adds nothing to the bill (its commitment is paid whether used or not),
  so ``decide()`` and the packer use it first; its row is still charged its amortised rate.
* **Idle commitment** (:func:`idle_commitment_usd`): the reservation hours no task used are
  paid too, but belong to no task; the simulator reports them apart (``reserved (idle)``).
* **Baseline**: the same runtime at the cheapest fitting on-demand price.

A row dearer than its baseline is explained by :func:`dearer_reasons`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from prefect_cloudsched.core.catalog import Offer, PurchaseOption
from prefect_cloudsched.core.records import (
    REAPED_STATE,
    TRANSFER_STATE,
    PlacementRecord,
    to_micro,
)

#: Why a row's spend may exceed its on-demand baseline (the report counts rows per reason).
INTERRUPTED = "interrupted"
OVERRAN = "overran"
FELL_BACK = "fell back"
SHARED_IDLE = "shared idle"
RESERVATION = "reservation"
EGRESS = "egress"
REAPED = "orphan"
UNEXPLAINED = "unexplained"
#: Report order of the reasons.
REASONS = (INTERRUPTED, OVERRAN, FELL_BACK, SHARED_IDLE, RESERVATION, EGRESS, REAPED, UNEXPLAINED)
#: What a reason means, for the docs and ``--help``.
REASON_HELP: Mapping[str, str] = {
    INTERRUPTED: "spot attempt lost: its cost is wasted work, its baseline 0",
    OVERRAN: "ran longer than its estimate (a shared instance lived longer than planned)",
    FELL_BACK: "the first choice could not start or was refused; a dearer offer ran",
    SHARED_IDLE: "paid its shared instance's idle time (members did not overlap fully)",
    RESERVATION: "an idle reservation dearer per hour than the cheapest on-demand that fits"
    " (larger, or elsewhere): paid whether used or not, so used first",
    EGRESS: "data or a checkpoint crossed regions: a task placed near its data (the"
    " decision counted the egress a cheaper-per-hour on-demand elsewhere would pay; its row"
    " counts none), or a spot-controlled task's move (its transfer row bills"
    " spot_control.egress_usd)",
    REAPED: "orphaned instance ended by `reap`: all of it wasted",
    UNEXPLAINED: "none of the above: please report it",
}
#: The reason ``runtime/shared.py`` gives a packed member (rows written before
#: ``Decision.shared_by`` existed are recognised by it).
PACKED_REASON_PREFIX = "packed: shares one"


#: The shortest instance run AWS and GCE bill for on-demand and spot (per-second after it).
MIN_BILLED_S = 60.0


def billed_seconds(seconds: float, option: PurchaseOption | str) -> float:
    """Seconds the cloud bills for one instance run of ``seconds`` under ``option``."""
    if option == PurchaseOption.RESERVED:
        return max(seconds, 0.0)
    return max(seconds, MIN_BILLED_S)


def instance_billed_micro(
    price_micro_per_hour: int, seconds: float, option: PurchaseOption | str
) -> int:
    """What one instance run of ``seconds`` is billed, in micro-dollars rounded *up*.

    The report's instance rows and the budget's count of an instance use this, so a cap
    that admitted an instance's time also covers what the report charges for it.
    """
    return math.ceil(price_micro_per_hour * billed_seconds(seconds, option) / 3600)


def hourly_rate(offer: Offer) -> float:
    """USD per hour a task is charged on ``offer`` (a reservation: its amortised rate)."""
    return offer.usd_per_hour


def charge_usd(offer: Offer, seconds: float, share: float = 1.0) -> float:
    """What ``seconds`` on ``offer`` cost a task holding ``share`` of the instance."""
    return hourly_rate(offer) * max(seconds, 0.0) / 3600 * share


def charge_micro(offer: Offer, seconds: float, share: float = 1.0) -> int:
    """:func:`charge_usd` in integer micro-dollars (what a ledger row stores)."""
    return to_micro(charge_usd(offer, seconds, share))


def member_share(offer: Offer, gpus: int, cpus: float) -> float:
    """The fraction of a shared instance one member holds: its GPUs, else its vCPUs."""
    if offer.gpu_count and gpus:
        return min(1.0, gpus / offer.gpu_count)
    return min(1.0, cpus / max(offer.vcpus, 1))


def spot_expected_cost(
    spot: np.ndarray, on_demand: np.ndarray, hazard: np.ndarray, hours: float, checkpointable: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Expected cost and interruption probability of spot offers over ``hours``.

    ``p = 1 − exp(−λ·h)``; cost ``(1 − p)·spot·h + p·(spot·h/2 + od·h_rerun)``: an
    interruption wastes on average half the spot run, then the rest runs on on-demand
    (all of it, ``h_rerun = h``, unless the task is checkpointable, ``h_rerun = h/2``).
    """
    p = -np.expm1(-hazard * hours)
    rerun_hours = hours / 2 if checkpointable else hours
    cost = (1 - p) * spot * hours + p * (spot * hours / 2 + on_demand * rerun_hours)
    return cost, p


def expected_usd(offer: Offer, hours: float, *, checkpointable: bool = False) -> float:
    """Expected charge of ``hours`` on one whole instance of ``offer`` (no egress)."""
    if offer.option is PurchaseOption.SPOT:
        cost, _ = spot_expected_cost(
            np.array([hourly_rate(offer)]),
            np.array([offer.ondemand_usd_per_hour]),
            np.array([offer.hazard_per_hour]),
            hours,
            checkpointable,
        )
        return float(cost[0])
    return hourly_rate(offer) * hours


def marginal_cost(accounted: Any, idle_reserved: Any) -> Any:
    """What choosing an offer adds to the bill: its accounted cost, 0 on an idle reservation.

    Ranking only: the commitment is paid whether the reservation is used or not, so using
    an idle one first is right; its row is still charged :func:`charge_usd`.
    """
    return np.where(idle_reserved, 0.0, accounted)


def commitment_usd(offer: Offer, count: int, seconds: float) -> float:
    """What ``count`` reserved instances of ``offer`` cost over ``seconds``, used or not."""
    return charge_usd(offer, seconds) * count


def idle_commitment_usd(offer: Offer, count: int, held_s: float, busy_s: float) -> float:
    """The part of a commitment no task was charged for (held instance-time minus busy)."""
    return max(0.0, commitment_usd(offer, count, held_s) - charge_usd(offer, busy_s))


# --------------------------------------------------------------------------- rows
def decision_details(record: PlacementRecord) -> dict[str, Any]:
    """The row's ``decision_json`` as a dict (``{}`` when unreadable)."""
    try:
        details = json.loads(record.decision_json or "{}")
    except ValueError:
        return {}
    return details if isinstance(details, dict) else {}


def dearer_reasons(record: PlacementRecord) -> tuple[str, ...]:
    """Why a row's spend exceeds its on-demand baseline; ``()`` when it does not.

    Read from the row itself: its interruption fields, its runtime against the decision's
    estimate (``decision_json.task_needs.est_runtime_s``), ``fell_back_from`` and
    ``shared_by`` of the decision that ran, its purchase option and the task's input data
    (``task_needs.input_gib``: the decision priced egress, the row does not) or its being a
    checkpoint transfer (``TRANSFER_STATE``). A dearer row
    none of these explains is :data:`UNEXPLAINED` (the report shows it; tests keep it at 0).
    """
    if record.cost_micro <= record.baseline_micro:
        return ()
    details = decision_details(record)
    reasons: list[str] = []
    if record.interruptions or record.state == "interrupted":
        reasons.append(INTERRUPTED)
    est = (details.get("task_needs") or {}).get("est_runtime_s")
    if isinstance(est, int | float) and est > 0 and record.runtime_s > est:
        reasons.append(OVERRAN)
    if details.get("fell_back_from"):
        reasons.append(FELL_BACK)
    shared_by = details.get("shared_by") or 1
    packed = any(str(r).startswith(PACKED_REASON_PREFIX) for r in details.get("reasons", ()))
    if shared_by > 1 or packed:
        reasons.append(SHARED_IDLE)
    if record.option == PurchaseOption.RESERVED.value:
        reasons.append(RESERVATION)
    if (details.get("task_needs") or {}).get("input_gib") or record.state == TRANSFER_STATE:
        reasons.append(EGRESS)
    if record.state == REAPED_STATE:
        reasons.append(REAPED)
    return tuple(reasons) or (UNEXPLAINED,)


__all__ = [
    "EGRESS",
    "FELL_BACK",
    "INTERRUPTED",
    "OVERRAN",
    "PACKED_REASON_PREFIX",
    "REAPED",
    "REASONS",
    "REASON_HELP",
    "RESERVATION",
    "SHARED_IDLE",
    "UNEXPLAINED",
    "charge_micro",
    "charge_usd",
    "commitment_usd",
    "dearer_reasons",
    "expected_usd",
    "hourly_rate",
    "idle_commitment_usd",
    "marginal_cost",
    "member_share",
    "spot_expected_cost",
]
