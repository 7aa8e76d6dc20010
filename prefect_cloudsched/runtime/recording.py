"""What one finished attempt writes to the ledger: its placement row, an interruption row,
and a checkpoint transfer row when the spot controller moved it to another region.

Kept apart from the session so the row's fields — the accounting model the report and the
simulator share — are read in one place.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_cloudsched.core.policy import cost_of
from prefect_cloudsched.core.records import (
    TRANSFER_OPTION,
    TRANSFER_STATE,
    PlacementRecord,
    as_utc,
    to_micro,
    to_usd,
)
from prefect_cloudsched.errors import MoveRequested, SpotInterrupted
from prefect_cloudsched.runtime.attempt import Attempt


def _whose(attempt: Attempt) -> dict[str, str]:
    """The fields naming the run, the task and where it ran, shared by an attempt's rows."""
    offer = attempt.decision.offer
    return dict(
        flow_run_id=attempt.flow_run_id,
        flow_name=attempt.spec.flow_name,
        task_run_id=attempt.task_run_id,
        task_name=attempt.task_name,
        cloud=offer.cloud,
        region=offer.region,
    )


def attempt_record(
    attempt: Attempt,
    runtime: float,
    error: BaseException | None,
    cost_micro: int,
    budget_hold_id: int | None = None,
) -> PlacementRecord:
    """The ledger row of one attempt.

    An interrupted attempt's cost is wasted work: it is billed, and its on-demand baseline
    is 0 (the baseline counts the work once, on the attempt that finished it). An attempt
    the spot controller moved (``MoveRequested``: state "moved") is billed with baseline 0
    too, but wastes nothing: its checkpoint carries the work to the next attempt.
    """
    decision, placement = attempt.decision, attempt.placement
    offer = decision.offer
    interrupted = isinstance(error, SpotInterrupted)
    moved = isinstance(error, MoveRequested)
    state = (
        "interrupted"
        if interrupted
        else ("moved" if moved else ("failed" if error else "completed"))
    )
    details: dict[str, Any] = {**decision.to_dict(), "attempt": placement.attempt}
    if attempt.stopped_by is not None:
        details["stopped"] = str(attempt.stopped_by)
    return PlacementRecord(
        **_whose(attempt),
        zone=offer.zone,
        instance_type=offer.instance_type,
        option=offer.option.value,
        offer_key=offer.key,
        gpu_type=offer.gpu_type,
        gpus=offer.gpu_count,
        price_micro_per_hour=to_micro(offer.usd_per_hour),
        started_at=attempt.started_at,
        # a stopped attempt is billed until its stop (in accounting mode the body may run
        # on, with no instance under it): the row's span says the same as its runtime
        ended_at=datetime.now(UTC)
        if attempt.stopped_at is None
        else attempt.started_at + timedelta(seconds=runtime),
        runtime_s=runtime,
        cost_micro=cost_micro,
        baseline_micro=0
        if interrupted or moved
        else to_micro(cost_of(decision.baseline_offer, runtime)),
        interruptions=int(interrupted),
        wasted_micro=cost_micro if interrupted else 0,
        state=state,
        instance_id=placement.instance_id,
        explanation=decision.explanation(),
        decision_json=json.dumps(details),
        reservation_source=attempt.reservation_source,
        budget_hold_id=budget_hold_id,
        deadline_at_risk=decision.deadline_at_risk,
    )


def transfer_record(attempt: Attempt) -> PlacementRecord | None:
    """The row billing a move's checkpoint transfer (``None`` when the attempt did not move).

    The replay pays ``egress_usd`` once per move (``simulate/spot_replay.py``) and the
    controller decides with it, so the ledger bills the same figure: a row of its own, with
    no instance (the boot-and-idle rows of ``core/instance_time.py`` read instance rows
    only), no runtime and baseline 0 (plain on-demand never moves a checkpoint).
    """
    if not attempt.egress_micro or attempt.checkpoint_from is None:
        return None
    offer = attempt.decision.offer
    usd = to_usd(attempt.egress_micro)
    return PlacementRecord(
        **_whose(attempt),
        zone=None,
        instance_type="checkpoint transfer",
        option=TRANSFER_OPTION,
        offer_key=f"transfer:{attempt.checkpoint_from}->{offer.region}",
        gpu_type=None,
        gpus=0,
        price_micro_per_hour=0,
        started_at=attempt.started_at,
        ended_at=attempt.started_at,
        runtime_s=0.0,
        cost_micro=attempt.egress_micro,
        baseline_micro=0,
        state=TRANSFER_STATE,
        explanation=(
            f"spot control moved the checkpoint from {attempt.checkpoint_from} to "
            f"{offer.region}: ${usd} transfer (spot_control.egress_usd)"
        ),
        decision_json=json.dumps(
            {
                "checkpoint_from": attempt.checkpoint_from,
                "checkpoint_to": offer.region,
                "egress_usd": str(usd),
                "attempt": attempt.placement.attempt,
            }
        ),
    )


def interruption_row(attempt: Attempt, error: SpotInterrupted, cost_micro: int) -> dict[str, Any]:
    """Keyword arguments of ``Ledger.record_interruption`` for a reclaimed attempt."""
    return dict(
        flow_run_id=attempt.flow_run_id,
        task_run_id=attempt.task_run_id,
        task_name=attempt.task_name,
        offer_key=attempt.decision.offer.key,
        instance_id=attempt.placement.instance_id,
        wasted_micro=cost_micro,
        detail=str(error),
    )


def instance_overhead(ledger: Any, records: list[PlacementRecord]) -> list[PlacementRecord]:
    """The instance time (boot, idle, warm-pool tail) no row of ``records`` paid for.

    The same rows ``report`` adds (``core/instance_time``), so a run's cost artifact totals
    what the report and the cloud's bill say. An instance's lifetime is set against all the
    rows charged on it since it launched (a warm instance may have served an earlier run).
    """
    from prefect_cloudsched.core.instance_time import overhead_records

    used = {r.instance_id for r in records if r.instance_id}
    if not used:
        return []
    instances = [
        row
        for run_id in sorted({r.flow_run_id for r in records})
        for row in ledger.instances(run_id=run_id)
        if row.get("instance_id") in used
    ]
    if {row.get("instance_id") for row in instances} != used:  # a warm one from another run
        instances = [row for row in ledger.instances() if row.get("instance_id") in used]
    launched = [as_utc(row["launched_at"]) for row in instances if row.get("launched_at")]
    if not launched:
        return []
    charged = ledger.placements(since=min(launched))
    return [row for row in overhead_records(charged, instances) if row.instance_id in used]


__all__ = ["attempt_record", "instance_overhead", "interruption_row", "transfer_record"]
