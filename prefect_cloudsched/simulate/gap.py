"""Where an elastic policy's cost goes above the omniscient bound, in USD per cause.

The per-second bound prices each job's ``W`` cheapest seconds (:mod:`.bound`). A replay with
recorded segments (``ElasticSimulator(record_segments=True)``) pays, per segment of ``e``
seconds on an offer at ``P`` per second with ``w`` seconds of work, ``max(e, 60) × P`` (or
``e × P`` of its reservation while busy). So, per job, paid − ``LB_j`` splits exactly into

* the price of its work above the bound's (``w × P`` − the job's bound pro rata by work),
  by the job's spot tolerance and the segment's purchase option;
* change-overs and lost work (``(e − w) × P``), and minimum bills (``(max(e, 60) − e) × P``);

and the policy's total adds the reservation's idle time. When the reported bound is the
held-capacity bound, the amount by which it exceeds the per-second bound is subtracted, so
the parts sum to cost − bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect_cloudsched.core.accounting import charge_usd, commitment_usd
from prefect_cloudsched.core.catalog import Offer, PurchaseOption
from prefect_cloudsched.simulate.bound import BoundResult
from prefect_cloudsched.simulate.engine import MIN_BILLED_S, JobRun

#: The causes, in report order.
CAUSES: tuple[str, ...] = (
    "no-spot work on on-demand (bound: reserved rate)",
    "no-spot work on a reserved shape dearer than the cheapest that fits",
    "spot-tolerant work on spot dearer than the cheapest spot up",
    "spot-tolerant work on on-demand",
    "spot-tolerant work on reserved",
    "minimum 60-s bills",
    "change-overs and lost work",
    "reservation idle",
    "held-capacity bound above the per-second bound",
)


def gap_breakdown(
    runs: Sequence[JobRun],
    bound: BoundResult,
    reserved: Mapping[str, tuple[Offer, int]],
    makespan_s: float,
    *,
    min_billed_s: float = MIN_BILLED_S,
) -> dict[str, float]:
    """USD per cause (:data:`CAUSES`); they sum to cost − bound when every job was placed."""
    scale = bound.per_second_total / bound.total if bound.total > 0 else 1.0
    parts = dict.fromkeys(CAUSES, 0.0)
    busy_reserved = 0.0
    for run in runs:
        if run.segments is None:
            raise ValueError("gap_breakdown needs a replay with record_segments=True")
        lb = (bound.per_job[run.index] or 0.0) * scale
        done = sum(w for _, _, w in run.segments) or 1.0
        tolerant = run.job.needs.allows_spot
        for offer, elapsed, work in run.segments:
            rate = charge_usd(offer, 1.0)
            held = offer.option is PurchaseOption.RESERVED
            billed = elapsed if held else max(elapsed, min_billed_s)
            if held:
                busy_reserved += charge_usd(offer, elapsed)
            parts["minimum 60-s bills"] += (billed - elapsed) * rate
            parts["change-overs and lost work"] += (elapsed - work) * rate
            premium = work * rate - lb * work / done
            if not tolerant:
                key = CAUSES[1] if held else CAUSES[0]
            elif offer.option is PurchaseOption.SPOT:
                key = CAUSES[2]
            else:
                key = CAUSES[4] if held else CAUSES[3]
            parts[key] += premium
    held_usd = sum(commitment_usd(o, n, makespan_s) for o, n in reserved.values())
    parts["reservation idle"] = held_usd - busy_reserved
    parts[CAUSES[-1]] = -(bound.total - bound.per_second_total)
    return parts


__all__ = ["CAUSES", "gap_breakdown"]
