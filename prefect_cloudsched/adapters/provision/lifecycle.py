"""What the AWS and GCP provisioners share: the view of an owned instance, the heartbeat,
the warm pool, deterministic names and the ledger bookkeeping.

The cloud's tags/labels are the source of truth for "ours" (the reaper trusts nothing else);
the ledger's ``instances`` table is a best-effort history for reports and for spotting an
instance that outlived its release.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from prefect_cloudsched.adapters.provision.base import (
    HEARTBEAT_TAG,
    OPTION_TAG,
    OWNER_TAG,
    RUN_TAG,
    TASK_TAG,
    InstanceHandle,
)

logger = logging.getLogger("prefect_cloudsched.adapters.provision")

_LABEL_BAD = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class OwnedInstance:
    """One live instance carrying our owner tag, as ``list_owned()`` reports it.

    Attributes:
        heartbeat: Epoch seconds of the last heartbeat tag (``None`` = never set).
        tags: Every tag (AWS) or label (GCP) on the instance.
    """

    cloud: str
    instance_id: str
    region: str
    zone: str | None
    instance_type: str
    state: str
    owner_id: str
    run_id: str
    task_name: str
    option: str
    spot: bool
    heartbeat: float | None
    launched_at: datetime | None
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], **facts: Any) -> OwnedInstance:
        """The cloud's ``facts`` about an instance plus what our tags (labels) say of it."""
        return cls(
            owner_id=tags.get(OWNER_TAG, ""),
            run_id=tags.get(RUN_TAG, ""),
            task_name=tags.get(TASK_TAG, ""),
            option=tags.get(OPTION_TAG, ""),
            heartbeat=parse_heartbeat(tags.get(HEARTBEAT_TAG)),
            tags=tags,
            **facts,
        )

    @property
    def offer_key(self) -> str:
        """The catalog key it was bought under: GCP prices per zone, AWS per region."""
        location = self.zone if self.cloud == "gcp" else self.region
        return f"{self.cloud}/{location}/{self.instance_type}/{self.option}"

    def handle(self) -> InstanceHandle:
        """The handle the instance book knows it by (what ``stopped`` is given on reaping)."""
        return InstanceHandle(
            cloud=self.cloud,
            instance_id=self.instance_id,
            offer_key=self.offer_key,
            region=self.region,
            zone=self.zone,
            option=self.option,
            run_id=self.run_id,
        )


def launch_tags(owner_id: str, run_id: str, task_name: str, option: str) -> dict[str, str]:
    """Our tags (AWS) or labels (GCP) on a new instance: how the runner and reaper know it."""
    return {
        OWNER_TAG: owner_id,
        RUN_TAG: run_id,
        TASK_TAG: task_name,
        OPTION_TAG: option,
        HEARTBEAT_TAG: str(int(time.time())),
    }


def label_value(text: str) -> str:
    """``text`` as a GCP label value: lowercase ``[a-z0-9_-]``, at most 63 characters.

    Deterministic, so a filter on the sanitised run id finds what was labelled with it;
    long or rewritten values keep a short hash of the original so two names stay distinct.
    """
    clean = _LABEL_BAD.sub("-", text.lower())
    if clean == text and len(clean) <= 63:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{clean[:54]}-{digest}"


def idempotency_digest(*parts: object) -> str:
    """A stable hex digest of the request identity (run, task, offer, sequence number)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


def parse_heartbeat(value: str | None) -> float | None:
    """The heartbeat tag's epoch seconds, ``None`` when missing or garbled."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


@dataclass(eq=False, repr=False, kw_only=True)
class InstanceBook:
    """The live instances one provisioner started: heartbeat thread, warm pool, ledger rows.

    One live book per provisioner: compared by identity, not ``repr``-ed field by field.

    Args:
        cloud: ``"aws"`` or ``"gcp"`` (ledger rows).
        owner_id: Our owner tag value (ledger rows).
        refresh: Called with the live handles every ``heartbeat_seconds`` to stamp a fresh
            heartbeat on them (one cheap batched call per region/zone).
        expire: Called with warm handles whose idle time ran out; terminates them.
        heartbeat_seconds: Interval; ``0`` turns the heartbeat off (then the reaper's
            heartbeat TTL must not be used for this owner).
        warm_seconds: How long a released instance stays idle for reuse (0 = never).
        ledger_url: Ledger to record instances in (``None`` = the default ledger).
        record_instances: Write ledger rows at all.
        warm_across_runs: A warm instance may serve the next task of *another* flow run
            served by this provisioner (opt-in: its run tag is moved to the new run).
    """

    cloud: str
    owner_id: str
    refresh: Callable[[list[InstanceHandle]], None]
    expire: Callable[[InstanceHandle], None]
    heartbeat_seconds: float
    warm_seconds: float
    ledger_url: str | None
    record_instances: bool
    warm_across_runs: bool = False

    def __post_init__(self) -> None:
        self._ledger: Any = None
        self._lock = threading.Lock()
        self._live: dict[str, InstanceHandle] = {}
        self._warm: dict[str, tuple[InstanceHandle, float]] = {}
        self.released: set[str] = set()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ live set
    def started(
        self,
        handle: InstanceHandle,
        *,
        offer_key: str,
        requested_at: datetime | None = None,
        reused: bool = False,
    ) -> None:
        """An instance runs (new, or a warm one reused): heartbeat it, write its ledger row.

        The row's ``launched_at`` is when the launch was *requested* (the cloud bills the
        boot), and a reused instance keeps its original one (the idle time between its
        tasks is billed too), so launched→terminated is what the cloud charges.
        """
        with self._lock:
            self._live[handle.instance_id] = handle
            self.released.discard(handle.instance_id)
            self._ensure_thread()
        self.write(
            handle,
            state="running",
            offer_key=offer_key,
            launched=not reused,
            launched_at=requested_at,
        )

    def stopped(self, handle: InstanceHandle, state: str = "terminated") -> None:
        """We terminated it (or saw it gone): stop its heartbeat, close its ledger row."""
        with self._lock:
            self._live.pop(handle.instance_id, None)
            self._warm.pop(handle.instance_id, None)
            self.released.add(handle.instance_id)
        self.write(handle, state=state, offer_key=handle.offer_key)

    def live(self, run_id: str | None = None) -> list[InstanceHandle]:
        """Handles still running, optionally of one run."""
        with self._lock:
            return [h for h in self._live.values() if run_id is None or h.run_id == run_id]

    # ------------------------------------------------------------------ warm pool
    def park(self, handle: InstanceHandle) -> bool:
        """Keep a released instance warm for reuse; ``False`` when warm pooling is off."""
        if self.warm_seconds <= 0:
            return False
        with self._lock:
            self._warm[handle.instance_id] = (handle, time.monotonic())
        self.write(handle, state="warm", offer_key=handle.offer_key)
        return True

    def take_warm(self, offer_key: str, run_id: str) -> InstanceHandle | None:
        """An idle warm instance of this offer (and run, unless shared across runs)."""
        with self._lock:
            for instance_id, (handle, _) in list(self._warm.items()):
                same_run = handle.run_id == run_id or self.warm_across_runs
                if handle.offer_key == offer_key and same_run:
                    del self._warm[instance_id]
                    return handle
        return None

    def handle_for_run(self, handle: InstanceHandle, run_id: str) -> InstanceHandle:
        """``handle`` as the instance of ``run_id`` (a warm one moved to another run)."""
        if handle.run_id == run_id:
            return handle
        moved = replace(handle, run_id=run_id)
        with self._lock:
            self._live.pop(handle.instance_id, None)
        return moved

    def parked(self, run_id: str) -> list[InstanceHandle]:
        """Warm instances of ``run_id`` waiting for a next task."""
        with self._lock:
            return [h for h, _ in self._warm.values() if h.run_id == run_id]

    def all_parked(self) -> list[InstanceHandle]:
        """Every warm instance, of any run."""
        with self._lock:
            return [h for h, _ in self._warm.values()]

    def _expired(self) -> list[InstanceHandle]:
        limit = time.monotonic() - self.warm_seconds
        with self._lock:
            return [h for h, since in self._warm.values() if since <= limit]

    # ------------------------------------------------------------------ heartbeat
    def _ensure_thread(self) -> None:
        if self.heartbeat_seconds <= 0 and self.warm_seconds <= 0:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._beat, name=f"cloudsched-{self.cloud}-heartbeat", daemon=True
            )
            self._thread.start()

    def _beat(self) -> None:
        intervals = [s for s in (self.heartbeat_seconds, self.warm_seconds / 4) if s > 0]
        interval = min(intervals)
        last_refresh = time.monotonic()
        while True:
            time.sleep(interval)
            for handle in self._expired():
                try:
                    self.expire(handle)
                except Exception as err:  # the reaper is the backstop
                    logger.warning("could not end warm instance %s: %s", handle.instance_id, err)
            live = self.live()
            if not live:
                with self._lock:
                    if not self._live:
                        self._thread = None
                        return
                continue
            due = time.monotonic() - last_refresh >= self.heartbeat_seconds
            if self.heartbeat_seconds > 0 and due:
                last_refresh = time.monotonic()
                try:
                    self.refresh(live)
                except Exception as err:
                    logger.warning("heartbeat refresh failed on %s: %s", self.cloud, err)

    # ------------------------------------------------------------------ ledger
    def write(
        self,
        handle: InstanceHandle,
        *,
        state: str,
        offer_key: str,
        launched: bool = False,
        launched_at: datetime | None = None,
    ) -> None:
        """Upsert the instance's ledger row; a ledger problem never stops provisioning."""
        if not self.record_instances:
            return
        now = datetime.now(UTC)
        values: dict[str, Any] = dict(
            instance_id=handle.instance_id,
            cloud=handle.cloud,
            region=handle.region,
            zone=handle.zone,
            offer_key=offer_key,
            owner_id=self.owner_id,
            run_id=handle.run_id,
            state=state,
        )
        if launched:
            values.update(launched_at=launched_at or now, terminated_at=None)
        elif state in ("terminated", "interrupted", "reaped"):
            values["terminated_at"] = now
        try:
            ledger = self._open_ledger()
            if not launched and all(
                row["instance_id"] != handle.instance_id
                for row in ledger.instances(run_id=handle.run_id)
            ):
                values["launched_at"] = now  # first row for it (e.g. one the reaper found)
            ledger.upsert_instance(**values)
        except Exception as err:
            logger.warning("ledger: could not record instance %s: %s", handle.instance_id, err)

    def _open_ledger(self) -> Any:
        if self._ledger is None:
            from prefect_cloudsched.adapters.ledger import Ledger

            self._ledger = Ledger(self.ledger_url)
        return self._ledger
