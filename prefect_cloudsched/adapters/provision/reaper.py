"""The reaper: find instances of ours that outlived their flow run, and terminate them.

The runner's exit path (``release_run``) is the first guarantee against a leaked
instance; the reaper is the second, for a process that died (SIGKILL, OOM, lost host).
An instance is reaped when it carries *our* owner tag and either

- its heartbeat tag (refreshed by the live provisioner every ``heartbeat_seconds``) is
  older than ``heartbeat_ttl`` — or it has none and was launched longer ago than that; or
- the ledger says we already ended it (a ``terminated``/``interrupted``/``reaped`` row)
  but the cloud still runs it (a release that failed half-way).

An instance without our owner tag is never listed, and each one is re-read right before
it is terminated, so a tag changed meanwhile also saves it.

Each instance it ends gets a ledger placement row (state ``reaped``, flow
``(reaped orphans)``) with its spend from launch — or from the moment the ledger says it was
released — to termination, so the report shows what orphans cost as a group of their own.
The dead run's live budget holds are released: the row now carries the real spend.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from prefect_cloudsched.adapters.provision.lifecycle import OwnedInstance
from prefect_cloudsched.core.catalog import Catalog
from prefect_cloudsched.core.records import (
    REAPED_AFTER_ROWS,
    REAPED_STATE,
    PlacementRecord,
    as_utc,
)

#: Default: 15 heartbeats of the default 60 s interval could be missed before we act.
DEFAULT_HEARTBEAT_TTL = 900.0
_ENDED = frozenset({"terminated", "interrupted", "reaped"})
#: The report's group for reaped orphans (``--group-by flow``, the default).
ORPHANS_FLOW = "(reaped orphans)"


class Reapable(Protocol):
    """What the reaper needs from a provisioner (both of ours provide it)."""

    cloud: str

    def list_owned(self) -> list[OwnedInstance]:
        """Live instances carrying our owner tag."""
        ...

    def terminate_owned(self, instance: OwnedInstance) -> bool:
        """Terminate one, after re-checking its owner tag; ``False`` if not ours any more."""
        ...


@dataclass(frozen=True, slots=True)
class ReapAction:
    """What the reaper decided about one instance.

    Attributes:
        reason: Why it is reaped, or why it is kept.
        reap: It is stale (and is, or in a dry run would be, terminated).
        done: It was terminated by this pass.
    """

    instance: OwnedInstance
    reason: str
    reap: bool
    done: bool = False


def stale_reason(
    instance: OwnedInstance,
    *,
    now: float,
    heartbeat_ttl: float,
    ended_ids: frozenset[str] | set[str] = frozenset(),
) -> str | None:
    """Why ``instance`` should be reaped, or ``None`` when it looks alive."""
    if instance.instance_id in ended_ids:
        return "ended in the ledger but still running"
    if instance.heartbeat is not None:
        age = now - instance.heartbeat
        return (
            f"heartbeat {age:.0f} s old (ttl {heartbeat_ttl:.0f} s)"
            if age > heartbeat_ttl
            else None
        )
    if instance.launched_at is not None:
        age = now - instance.launched_at.timestamp()
        if age > heartbeat_ttl:
            return f"no heartbeat, launched {age:.0f} s ago"
    return None


def alive_reason(instance: OwnedInstance, *, now: float) -> str:
    """Why an instance :func:`stale_reason` keeps is kept, as the rule that kept it says."""
    if instance.heartbeat is not None:
        return f"alive (heartbeat {now - instance.heartbeat:.0f} s old)"
    if instance.launched_at is not None:
        age = now - instance.launched_at.timestamp()
        return f"alive (no heartbeat yet, launched {age:.0f} s ago)"
    return "kept (no heartbeat and launch time unknown)"


def reap(
    provisioners: Iterable[Reapable],
    *,
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL,
    ledger: Any | None = None,
    dry_run: bool = False,
    now: float | None = None,
    catalog: Catalog | None = None,
) -> list[ReapAction]:
    """Terminate every stale instance of ours on these provisioners' clouds.

    Args:
        provisioners: One per cloud (their owner id decides what "ours" is).
        heartbeat_ttl: Seconds without a heartbeat after which an instance is stale.
        ledger: A :class:`~prefect_cloudsched.adapters.ledger.Ledger` whose ``instances`` rows
            mark instances we already ended, and where each reaped orphan's spend is recorded.
        catalog: Prices for those rows (default: the bundled catalog).
        dry_run: Decide and report, terminate nothing.
        now: Epoch seconds (tests).

    Returns:
        One action per instance of ours found, stale or not.
    """
    if not math.isfinite(heartbeat_ttl) or heartbeat_ttl <= 0:
        raise ValueError(f"heartbeat_ttl must be a number of seconds > 0, got {heartbeat_ttl}")
    clock = time.time() if now is None else now
    known = {row["instance_id"]: row for row in ledger.instances()} if ledger is not None else {}
    ended = {iid for iid, row in known.items() if row["state"] in _ENDED}
    actions: list[ReapAction] = []
    for provisioner in provisioners:
        for instance in provisioner.list_owned():
            reason = stale_reason(instance, now=clock, heartbeat_ttl=heartbeat_ttl, ended_ids=ended)
            if reason is None:
                actions.append(ReapAction(instance, alive_reason(instance, now=clock), reap=False))
                continue
            done = False if dry_run else provisioner.terminate_owned(instance)
            if not dry_run and not done:
                reason = f"{reason}; skipped: no longer ours"
            actions.append(ReapAction(instance, reason, reap=True, done=done))
            if done and ledger is not None:
                _record_orphan(ledger, instance, known.get(instance.instance_id), catalog)
    return actions


def orphan_record(
    instance: OwnedInstance,
    *,
    ended_at: datetime,
    usd_per_hour: float | None,
    ledger_row: Mapping[str, Any] | None = None,
    charged: Iterable[PlacementRecord] = (),
) -> PlacementRecord:
    """The ledger row of an orphan the reaper ended: the part of its bill no row paid.

    The cloud bills the instance from launch to termination (at least its one-minute
    minimum, :func:`~prefect_cloudsched.core.accounting.instance_billed_micro`); the rows
    already ``charged`` on it (its tasks, before the process died) paid part of that, so
    the orphan row is the rest — the report's boot-and-idle rows skip reaped instances, so
    this row is all of it. Without a known launch it counts from the ledger's release, else
    nothing. The whole spend is waste: baseline 0, so the report names it ``orphan``.
    """
    from prefect_cloudsched.core.accounting import instance_billed_micro
    from prefect_cloudsched.core.records import to_micro

    released = as_utc((ledger_row or {}).get("terminated_at"))
    launched = _launched(instance, ledger_row)
    started = launched or released or ended_at
    seconds = max(0.0, (ended_at - started).total_seconds())
    option = instance.option or ("spot" if instance.spot else "on-demand")
    rows = [r for r in charged if r.instance_id == instance.instance_id and r.state != REAPED_STATE]
    paid = sum(r.cost_micro for r in rows)
    price_micro = to_micro(usd_per_hour) if usd_per_hour is not None else 0
    if launched:
        billed = instance_billed_micro(price_micro, seconds, option)
    else:  # from the release: the run's own rows paid the minimum
        billed = math.ceil(price_micro * seconds / 3600)
    cost = max(0, billed - paid)
    unpaid_s = max(0.0, seconds - sum(r.runtime_s for r in rows))
    since = "launch" if launched else "its release" if released else "now (launch unknown)"
    price = "price unknown" if usd_per_hour is None else f"${usd_per_hour:.4f}/h"
    paid_note = f", less ${paid / 1e6:.6f} its {len(rows)} row(s) paid" if rows else ""
    return PlacementRecord(
        flow_run_id=instance.run_id or "unknown",
        flow_name=ORPHANS_FLOW,
        task_run_id=instance.instance_id,
        task_name=f"orphan of {instance.task_name or 'unknown task'}",
        cloud=instance.cloud,
        region=instance.region,
        zone=instance.zone,
        instance_type=instance.instance_type,
        option=option,
        offer_key=instance.offer_key,
        gpu_type=None,
        gpus=0,
        price_micro_per_hour=price_micro,
        started_at=started,
        ended_at=ended_at,
        runtime_s=unpaid_s,
        cost_micro=cost,
        baseline_micro=0,
        wasted_micro=cost,
        state=REAPED_STATE,
        instance_id=instance.instance_id,
        decision_json=json.dumps({REAPED_AFTER_ROWS: len(rows)}),
        explanation=(
            f"reaped orphan: {seconds:.0f} s from {since} to termination at {price}{paid_note}"
        ),
    )


def _launched(instance: OwnedInstance, ledger_row: Mapping[str, Any] | None) -> datetime | None:
    """When the orphan was launched: the cloud's word, else the ledger's."""
    return as_utc(instance.launched_at) or as_utc((ledger_row or {}).get("launched_at"))


def _record_orphan(
    ledger: Any, instance: OwnedInstance, row: Mapping[str, Any] | None, catalog: Catalog | None
) -> None:
    from prefect_cloudsched.core.catalog import load_catalog

    ended = datetime.now(UTC)
    record = orphan_record(instance, ended_at=ended, usd_per_hour=None, ledger_row=row)
    try:
        offer = (catalog or load_catalog()).find(record.offer_key)
    except KeyError:
        offer = None
    if offer is not None:  # priced: what its task rows paid comes off (rows since launch)
        launched = _launched(instance, row)
        charged = ledger.placements(since=launched) if launched is not None else []
        priced = orphan_record(
            instance, ended_at=ended, usd_per_hour=offer.usd_per_hour, ledger_row=row,
            charged=charged,
        )  # fmt: skip
        record = replace(priced, gpu_type=offer.gpu_type, gpus=offer.gpu_count)
    ledger.record([record])
    if instance.run_id:
        ledger.release_run_holds(instance.run_id)
