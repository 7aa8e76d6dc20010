"""Instance time no task row paid for: boot, idle between tasks, the warm pool's tail.

A task row is charged from the moment its instance is running and attached until the task
ends. The cloud bills more: from the launch request (the boot), the time a warm instance
waits for its next task, and the idle time kept after the last one. The ledger holds both
sides — each instance's ``launched_at`` / ``terminated_at`` (``instances`` table) and the
rows charged on it — so this module derives the difference from the ledger alone, and the
report adds it as rows of their own: spend then equals what the cloud bills.

An overhead row claims no savings (its baseline equals its cost): plain on-demand would
boot instances too, and the warm pool's idle time is the price of skipping later boots.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prefect_cloudsched.core.accounting import instance_billed_micro
from prefect_cloudsched.core.records import REAPED_STATE, PlacementRecord, as_utc

#: Task name (``--group-by task``) of the overhead rows.
OVERHEAD_TASK = "(instance boot and idle)"
#: ``state`` of an overhead row.
OVERHEAD_STATE = "overhead"


def overhead_records(
    records: Iterable[PlacementRecord],
    instances: Iterable[Mapping[str, Any]],
    *,
    now: datetime | None = None,
) -> list[PlacementRecord]:
    """One row per instance of ``records`` whose billed lifetime exceeds what its rows paid.

    Args:
        records: Ledger rows (only those with an ``instance_id`` count).
        instances: Instance rows of the ledger (``Ledger.instances()``).
        now: End of the lifetime of instances still running (default: now).

    The lifetime (at least the clouds' one-minute minimum, :func:`instance_billed_micro`) is priced
    at the instance's own rate (the ``price_micro_per_hour`` of its rows), rounded up to a
    whole micro-dollar like every charge.
    """
    now = now or datetime.now(UTC)
    charged: dict[str, list[PlacementRecord]] = defaultdict(list)
    reaped: set[str] = set()
    for record in records:
        if record.instance_id and record.state != OVERHEAD_STATE:
            charged[record.instance_id].append(record)
        if record.instance_id and record.state == REAPED_STATE:
            reaped.add(record.instance_id)  # the reaper's row already paid its unpaid time
    overhead: list[PlacementRecord] = []
    for row in instances:
        rows = charged.get(str(row.get("instance_id")))
        launched = _utc(row.get("launched_at"))
        if not rows or launched is None or row.get("instance_id") in reaped:
            continue
        ended = _utc(row.get("terminated_at")) or now
        seconds = max(0.0, (ended - launched).total_seconds())
        first = min(rows, key=lambda r: r.started_at)
        price = max(r.price_micro_per_hour for r in rows)
        billed = instance_billed_micro(price, seconds, first.option)
        extra = billed - sum(r.cost_micro for r in rows)
        if extra <= 0:
            continue
        overhead.append(_row(first, launched, ended, extra, seconds - _busy(rows)))
    return overhead


def _row(
    first: PlacementRecord, launched: datetime, ended: datetime, cost: int, idle_s: float
) -> PlacementRecord:
    return PlacementRecord(
        flow_run_id=first.flow_run_id,
        flow_name=first.flow_name,
        task_run_id=f"{first.instance_id}:overhead",
        task_name=OVERHEAD_TASK,
        cloud=first.cloud,
        region=first.region,
        zone=first.zone,
        instance_type=first.instance_type,
        option=first.option,
        offer_key=first.offer_key,
        gpu_type=first.gpu_type,
        gpus=first.gpus,
        price_micro_per_hour=first.price_micro_per_hour,
        started_at=launched,
        ended_at=ended,
        runtime_s=max(0.0, idle_s),
        cost_micro=cost,
        baseline_micro=cost,
        state=OVERHEAD_STATE,
        instance_id=first.instance_id,
        explanation=(
            f"instance {first.instance_id}: billed from launch request to termination; "
            "this is the time no task row paid (boot, idle between tasks, warm-pool tail)"
        ),
    )


def _busy(rows: list[PlacementRecord]) -> float:
    """Seconds some task ran on the instance (overlapping members counted once)."""
    spans = sorted((r.started_at, r.ended_at) for r in rows)
    busy, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            busy += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            busy += (stop - end).total_seconds()
            end = stop
    return busy


def _utc(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


__all__ = ["OVERHEAD_STATE", "OVERHEAD_TASK", "overhead_records"]
