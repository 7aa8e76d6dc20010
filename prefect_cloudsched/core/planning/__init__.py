"""Planning: the capacity plan (reserved / on-demand / spot over hours) and task packing.

Pure core: no Prefect, no cloud SDK; PuLP is imported only when a program is solved.

* :func:`plan_capacity` — how many reserved instances to hold and the hourly on-demand/spot
  mix that covers a demand forecast at a service level, at minimum expected cost.
* :func:`replay_plan` — what a plan's reservations cost against the demand that happened.
* :func:`pack_tasks` — several queued tasks onto few instances when that is cheaper.
"""

from __future__ import annotations

from prefect_cloudsched.core.planning.capacity import (
    CapacityPlan,
    ReservedItem,
    demand_from_forecast,
    plan_capacity,
)
from prefect_cloudsched.core.planning.packing import PackedBin, PackingResult, PackTask, pack_tasks
from prefect_cloudsched.core.planning.replay import ReplayResult, replay_plan

__all__ = [
    "CapacityPlan",
    "PackTask",
    "PackedBin",
    "PackingResult",
    "ReplayResult",
    "ReservedItem",
    "demand_from_forecast",
    "pack_tasks",
    "plan_capacity",
    "replay_plan",
]
