"""The ``ensure → check → release`` lifecycle both clouds share, as one base class.

AWS and GCP differ in how they launch, read and end a machine; they do not differ in the
order of the steps: admit the offer, reuse a warm instance of ours, resolve the image, launch
with a deterministic idempotency key (trying the next key when the cloud answers with an
instance an earlier process ended), wait until it runs (ending it on any failure so nothing
half-started is left), then record it. :class:`CloudProvisioner` owns that order; the
subclasses fill in the cloud calls (``_admit``, ``_image``, ``_launch_once``, ``_state``,
``_lost``, ``_end``, ``_relabel``).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.adapters.provision.lifecycle import (
    InstanceBook,
    idempotency_digest,
    logger,
)
from prefect_cloudsched.adapters.provision.settings import ProvisionerSettings
from prefect_cloudsched.core.catalog import Offer, PurchaseOption
from prefect_cloudsched.errors import CapacityError, ProvisioningError, SpotInterrupted

#: How ``_state`` summarises an instance: still starting, running, or ended / vanished.
Phase = Literal["pending", "running", "gone"]

#: Launch keys tried per ``ensure`` before the offer is refused as capacity.
LAUNCH_KEYS = 3


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """One launch attempt: the offer, where and from what image, under which idempotency key.

    Attributes:
        location: The region (AWS) or zone (GCP) ``_admit`` chose.
        digest: Hex idempotency digest of (owner, run, task, offer, sequence).
        startup_script: Boot script (user-data / ``startup-script`` metadata), if any.
    """

    offer: Offer
    location: str
    image: str
    digest: str
    run_id: str
    task_name: str
    startup_script: str | None


class CloudProvisioner(ABC):
    """Shared lifecycle of the AWS and GCP provisioners (see ``Provisioner``).

    Subclasses set ``cloud`` and ``settings`` (their cloud's ``ProvisionerSettings``) and
    call :meth:`_init_lifecycle` from ``__init__``.
    """

    cloud: str
    settings: ProvisionerSettings
    book: InstanceBook

    def _init_lifecycle(self) -> None:
        settings = self.settings
        self._lock = threading.Lock()
        self._sequence: dict[tuple[str, str, str], int] = defaultdict(int)
        self.book = InstanceBook(
            cloud=self.cloud,
            owner_id=settings.owner_id,
            refresh=self._refresh_heartbeats,
            expire=self._end_handle,
            heartbeat_seconds=settings.heartbeat_seconds,
            warm_seconds=settings.warm_seconds,
            ledger_url=settings.ledger_url,
            record_instances=settings.record_instances,
            warm_across_runs=settings.warm_across_runs,
        )

    @property
    def launch_timeout_seconds(self) -> float:
        """See ``Provisioner.launch_timeout_seconds`` (from the settings)."""
        return self.settings.launch_timeout_seconds

    @property
    def warm_seconds(self) -> float:
        """See ``Provisioner.warm_seconds`` (from the settings)."""
        return self.settings.warm_seconds

    # ------------------------------------------------------------------ the lifecycle
    def ensure(
        self, offer: Offer, *, run_id: str, task_name: str, startup_script: str | None = None
    ) -> InstanceHandle:
        """Start (or reuse a warm instance of ours) for ``offer`` and wait until it runs.

        Raises:
            CapacityError: the cloud refused this offer now, or it is outside this pool.
            ProvisioningError: a setting is wrong (credentials, region, image, network).
        """
        location = self._admit(offer)
        warm = self.book.take_warm(offer.key, run_id)
        if warm is not None and self._reuse(warm, run_id, task_name):
            return self.book.handle_for_run(warm, run_id)
        image = self._image(offer)
        requested_at = datetime.now(UTC)
        handle = None
        for _ in range(LAUNCH_KEYS):
            digest = self._next_digest(run_id, task_name, offer.key)
            request = LaunchRequest(
                offer, location, image, digest, run_id, task_name, startup_script
            )
            handle = self._launch_once(request)
            if handle is not None:
                break
        if handle is None:
            raise CapacityError(
                offer.key, "LaunchFailed", "every launch key answered with an ended instance"
            )
        try:
            self._wait_running(handle)
        except BaseException:
            self._end_quietly(handle)  # never leave a half-started instance behind
            raise
        self.book.started(handle, offer_key=offer.key, requested_at=requested_at)
        logger.info("started %s %s for %s", handle.instance_id, offer.key, task_name)
        return handle

    def _next_digest(self, run_id: str, task_name: str, offer_key: str) -> str:
        """The idempotency digest of the next launch of (run, task, offer) in this process."""
        with self._lock:
            identity = (run_id, task_name, offer_key)
            sequence = self._sequence[identity]
            self._sequence[identity] += 1
        return idempotency_digest(self.settings.owner_id, *identity, sequence)

    def _wait_running(self, handle: InstanceHandle) -> None:
        """Poll until running; refuse the offer on a timeout or an end during launch."""
        deadline = time.monotonic() + self.settings.launch_timeout_seconds
        while True:
            phase, detail = self._state(handle)
            if phase == "running":
                return
            if phase == "gone" or time.monotonic() >= deadline:
                code = "EndedAtLaunch" if phase == "gone" else "LaunchTimeout"
                raise CapacityError(handle.offer_key, code, f"{handle.instance_id}: {detail}")
            time.sleep(self.settings.poll_seconds)

    def _reuse(self, handle: InstanceHandle, run_id: str, task_name: str) -> bool:
        """Take a warm instance back if it still runs (relabelled for its new task)."""
        phase, _ = self._state(handle)
        if phase != "running":
            self._end_quietly(handle)
            return False
        self._relabel(handle, run_id, task_name)
        self.book.started(
            self.book.handle_for_run(handle, run_id), offer_key=handle.offer_key, reused=True
        )
        return True

    def check(self, handle: InstanceHandle) -> None:
        """Raise if the cloud ended the instance while its task ran.

        Raises:
            SpotInterrupted: a spot instance was reclaimed.
            ProvisioningError: a non-spot instance ended without us ending it.
        """
        if handle.instance_id in self.book.released:
            return
        lost = self._lost(handle)
        if lost is None:
            return
        spot, message = lost
        self.book.stopped(handle, state="interrupted")
        if spot or handle.option == PurchaseOption.SPOT.value:
            raise SpotInterrupted(handle.instance_id, handle.offer_key, message)
        raise ProvisioningError(message)

    def release(self, handle: InstanceHandle) -> None:
        """End the instance of one finished task (or park it warm when ``warm_seconds`` > 0)."""
        if handle.instance_id in self.book.released:
            return
        if self.book.park(handle):
            return
        self._end_handle(handle)

    def kept_for_other_runs(self, run_id: str) -> set[str]:
        """Warm instances of ``run_id`` that outlive it (``warm_across_runs``): the run's end
        spares them; they end when their idle time runs out, or with :meth:`end_parked`."""
        if not self.settings.warm_across_runs:
            return set()
        return {h.instance_id for h in self.book.parked(run_id)}

    def end_parked(self) -> int:
        """End every warm instance now (the process is exiting); returns how many."""
        parked = self.book.all_parked()
        for handle in parked:
            self._end_quietly(handle)
        return len(parked)

    def _end_handle(self, handle: InstanceHandle) -> None:
        self._end(handle)
        self.book.stopped(handle)

    def _end_quietly(self, handle: InstanceHandle) -> None:
        try:
            self._end_handle(handle)
        except Exception as err:  # its tags and stale heartbeat leave it to the reaper
            logger.error(
                "could not end %s: %s (run `prefect-cloudsched reap`)", handle.instance_id, err
            )

    # ------------------------------------------------------------------ cloud hooks
    @abstractmethod
    def _admit(self, offer: Offer) -> str:
        """The region/zone to launch ``offer`` in; ``CapacityError`` when outside the pool."""

    @abstractmethod
    def _image(self, offer: Offer) -> str:
        """The boot image for ``offer`` (``ProvisioningError`` naming the setting if none)."""

    @abstractmethod
    def _launch_once(self, request: LaunchRequest) -> InstanceHandle | None:
        """Launch ``request``; ``None`` = its key was taken by an instance that has ended."""

    @abstractmethod
    def _state(self, handle: InstanceHandle) -> tuple[Phase, str]:
        """The instance's phase and the cloud's word for it."""

    @abstractmethod
    def _lost(self, handle: InstanceHandle) -> tuple[bool, str] | None:
        """``None`` while it lives; else (reclaimed as spot?, one-line message)."""

    @abstractmethod
    def _end(self, handle: InstanceHandle) -> None:
        """Terminate / delete the instance (idempotent: gone already is fine)."""

    @abstractmethod
    def _relabel(self, handle: InstanceHandle, run_id: str, task_name: str) -> None:
        """Point a reused instance's run and task tags at its new task."""

    @abstractmethod
    def _refresh_heartbeats(self, handles: list[InstanceHandle]) -> None:
        """Stamp a fresh heartbeat on these live instances."""

    # ------------------------------------------------------------------ protocol extras
    def owned_reservations(self) -> dict[str, int]:
        """Reserved capacity we own per ``capacity_key`` (settings' ``reservations``)."""
        return dict(self.settings.reservations)

    def spot_prices(self, region: str, instance_types: Iterable[str]) -> dict[str, float]:
        """Live spot prices per instance type; ``{}`` where the cloud offers none here."""
        return {}
