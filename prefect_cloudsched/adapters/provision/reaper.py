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
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from prefect_cloudsched.adapters.provision.lifecycle import OwnedInstance

#: Default: 15 heartbeats of the default 60 s interval could be missed before we act.
DEFAULT_HEARTBEAT_TTL = 900.0
_ENDED = frozenset({"terminated", "interrupted", "reaped"})


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


def reap(
    provisioners: Iterable[Reapable],
    *,
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL,
    ledger: Any | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[ReapAction]:
    """Terminate every stale instance of ours on these provisioners' clouds.

    Args:
        provisioners: One per cloud (their owner id decides what "ours" is).
        heartbeat_ttl: Seconds without a heartbeat after which an instance is stale.
        ledger: A :class:`~prefect_cloudsched.adapters.ledger.Ledger` whose ``instances`` rows
            mark instances we already ended (optional).
        dry_run: Decide and report, terminate nothing.
        now: Epoch seconds (tests).

    Returns:
        One action per instance of ours found, stale or not.
    """
    if heartbeat_ttl <= 0:
        raise ValueError(f"heartbeat_ttl must be > 0 seconds, got {heartbeat_ttl}")
    clock = time.time() if now is None else now
    ended = (
        {row["instance_id"] for row in ledger.instances() if row["state"] in _ENDED}
        if ledger is not None
        else set()
    )
    actions: list[ReapAction] = []
    for provisioner in provisioners:
        for instance in provisioner.list_owned():
            reason = stale_reason(instance, now=clock, heartbeat_ttl=heartbeat_ttl, ended_ids=ended)
            if reason is None:
                actions.append(ReapAction(instance, "alive (fresh heartbeat)", reap=False))
                continue
            done = False if dry_run else provisioner.terminate_owned(instance)
            if not dry_run and not done:
                reason = f"{reason}; skipped: no longer ours"
            actions.append(ReapAction(instance, reason, reap=True, done=done))
    return actions
