"""A provisioner stand-in with no cloud behind it, for tests of the runtime and the runner.

``ensure`` "starts" an instance at once and every call is recorded, so a test can check
what the runtime asked for and what it gave back. Tests script a cloud's refusals and
interruptions by subclassing and overriding ``ensure`` or ``check``. For the real
provisioners against local stand-in clouds use :class:`~.clouds.MockClouds` instead.
"""

from __future__ import annotations

from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.errors import SpotInterrupted


class RecordingProvisioner:
    """Starts fake instances at once; records them; reclaims spot ones if told to."""

    #: It starts at once and keeps nothing warm (a budget cap still counts the minimum).
    launch_timeout_seconds = 0.0
    warm_seconds = 0.0

    def __init__(self, cloud: str = "aws", *, reclaim_spot: bool = False) -> None:
        self.cloud = cloud
        self.reclaim_spot = reclaim_spot
        self.started: list[InstanceHandle] = []
        self.released: list[str] = []
        self.running: dict[str, InstanceHandle] = {}
        self.scripts: list[str | None] = []

    def instance_id(self, offer: Offer, task_name: str) -> str:
        """The id the next instance gets (``i-0``, ``i-1``, ...)."""
        return f"i-{len(self.started)}"

    def ensure(
        self, offer: Offer, *, run_id: str, task_name: str, startup_script: str | None = None
    ) -> InstanceHandle:
        """See ``Provisioner.ensure``: the instance is running as soon as it is asked for."""
        handle = InstanceHandle(
            self.cloud,
            self.instance_id(offer, task_name),
            offer.key,
            offer.region,
            offer.zone,
            offer.option.value,
            run_id,
        )
        self.started.append(handle)
        self.running[handle.instance_id] = handle
        self.scripts.append(startup_script)
        return handle

    def check(self, handle: InstanceHandle) -> None:
        """See ``Provisioner.check``: with ``reclaim_spot`` every spot instance is lost."""
        if self.reclaim_spot and handle.option == "spot":
            raise SpotInterrupted(handle.instance_id, handle.offer_key)

    def release(self, handle: InstanceHandle) -> None:
        """See ``Provisioner.release``."""
        self.released.append(handle.instance_id)
        self.running.pop(handle.instance_id, None)

    def release_run(self, run_id: str) -> int:
        """See ``Provisioner.release_run``: how many of the run's instances were still up."""
        mine = [i for i, h in self.running.items() if h.run_id == run_id]
        for instance_id in mine:
            del self.running[instance_id]
        return len(mine)
