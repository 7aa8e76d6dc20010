"""The contract every cloud provisioner keeps (AWS and GCP implement it)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prefect_cloudsched.core.catalog import Offer

#: Tag / label keys put on everything we start. GCP labels allow [a-z0-9_-] only.
OWNER_TAG = "cloudsched-owner"
RUN_TAG = "cloudsched-run"
TASK_TAG = "cloudsched-task"
OPTION_TAG = "cloudsched-option"
HEARTBEAT_TAG = "cloudsched-heartbeat"


@dataclass(frozen=True, slots=True)
class InstanceHandle:
    """An instance we started (or reused) for a placement."""

    cloud: str
    instance_id: str
    offer_key: str
    region: str
    zone: str | None
    option: str
    run_id: str


@runtime_checkable
class Provisioner(Protocol):
    """Start, check, release and list our instances on one cloud.

    Every call is idempotent, retried with backoff on throttling and bounded in time.
    """

    cloud: str
    #: Longest wait for an instance to run; a hard budget cap holds this much instance
    #: time before it launches one (the boot is billed and cannot be stopped midway).
    launch_timeout_seconds: float
    #: How long a released instance may be kept warm (billed; a hard cap counts it).
    warm_seconds: float

    def ensure(
        self, offer: Offer, *, run_id: str, task_name: str, startup_script: str | None = None
    ) -> InstanceHandle:
        """Start (or reuse a warm instance of ours) for ``offer`` and wait until it runs.

        ``startup_script`` is the boot script (AWS user-data, GCP ``startup-script``) the
        executor needs on the instance, e.g. one that starts a Dask worker.

        Raises:
            CapacityError: the cloud refused this offer now (stockout, quota, price,
                throttling after retries); the runner falls back to the next offer.
            ProvisioningError: a setting is wrong (credentials, region, image, subnet).
        """
        ...

    def check(self, handle: InstanceHandle) -> None:
        """Raise :class:`~prefect_cloudsched.errors.SpotInterrupted` if it was reclaimed."""
        ...

    def release(self, handle: InstanceHandle) -> None:
        """Terminate (or return to the warm pool) the instance of one finished task."""
        ...

    def release_run(self, run_id: str) -> int:
        """Terminate every instance of ours tagged with ``run_id``; return how many."""
        ...

    def owned_reservations(self) -> dict[str, int]:
        """Reserved / committed capacity we own per ``Offer.capacity_key`` (used first)."""
        ...

    def spot_prices(self, region: str, instance_types: Iterable[str]) -> dict[str, float]:
        """Live spot price per instance type in ``region``; ``{}`` where none is published."""
        ...
