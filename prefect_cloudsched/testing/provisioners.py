"""A provisioner stand-in with no cloud behind it, for tests of the runtime and the runner.

``ensure`` "starts" an instance at once and every call is recorded, so a test can check
what the runtime asked for and what it gave back. Tests script a cloud's refusals and
interruptions by subclassing and overriding ``ensure`` or ``check``. For the real
provisioners against local stand-in clouds use :class:`~.clouds.MockClouds` instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefect_cloudsched.adapters.provision.base import HEARTBEAT_TAG, InstanceHandle
from prefect_cloudsched.adapters.provision.lifecycle import launch_tags
from prefect_cloudsched.adapters.provision.retry import Backoff
from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.errors import SpotInterrupted

#: Retries of a real provisioner under test: the same few attempts, milliseconds apart, so
#: the fault tests of both clouds stay fast.
FAST_BACKOFF = Backoff(attempts=4, base_seconds=0.001, max_seconds=0.01, deadline_seconds=5)


def assert_launch_marks(
    marks: Mapping[str, str], *, owner: str, run: str, task: str, option: str
) -> None:
    """Check that ``marks`` hold ``launch_tags``' owner, run, task and option, and a fresh
    heartbeat.

    AWS tags and GCP labels carry the same marks (the reaper and the runner rely on them),
    so both clouds' tests check them here, in one place.
    """
    expected = launch_tags(owner, run, task, option)
    beat = float(expected.pop(HEARTBEAT_TAG))
    assert {key: marks.get(key) for key in expected} == expected
    assert abs(float(marks[HEARTBEAT_TAG]) - beat) < 60


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
