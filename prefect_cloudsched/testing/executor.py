"""An executor for tests with stand-in clouds: the body runs here, "as if" on the instance.

With real provisioners the runner refuses to run a body in this process while an instance
is billed for it. Tests of the provisioning path on stand-in clouds (moto, the fake GCE
server, fake provisioners) have no machine to run the body on, so this executor runs it in
the calling thread and declares it ran on the instance. Never use it against a real cloud.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prefect_cloudsched.adapters.execute.base import LocalExecutor, Placement

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched import CloudSchedTaskRunner

R = TypeVar("R")


class InstanceStandInExecutor(LocalExecutor):
    """Runs the body in this thread and counts it as run on the placement's instance."""

    name = "instance-stand-in"
    runs_on_instance = True

    def __init__(self) -> None:
        self.placements: list[Placement] = []

    def run(self, call: Callable[[], R], placement: Placement) -> R:
        self.placements.append(placement)
        return call()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceStandInExecutor)

    def __hash__(self) -> int:
        return hash(InstanceStandInExecutor)


__all__ = ["InstanceStandInExecutor"]


def stand_in_runner(provisioner: Any, executor: Any = None, **options: Any) -> CloudSchedTaskRunner:
    """A task runner whose only cloud is ``provisioner``, registered as AWS.

    The runner tests script one stand-in cloud's behaviour (refusals, interruptions, prices),
    so every placement must land on it; bodies run here through
    :class:`InstanceStandInExecutor` unless ``executor`` is given. ``options`` go to
    ``CloudSchedTaskRunner`` as they are.
    """
    from prefect_cloudsched import CloudSchedTaskRunner
    from prefect_cloudsched.core.policy import PolicyConfig

    return CloudSchedTaskRunner(
        provisioners={"aws": provisioner},
        executor=InstanceStandInExecutor() if executor is None else executor,
        policy=PolicyConfig(allowed_clouds=frozenset({"aws"})),
        **options,
    )
