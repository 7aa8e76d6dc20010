"""The classic queueing disciplines the seed review compares against (order and assignment only).

They run on a fixed fleet (:mod:`prefect_cloudsched.simulate.fleet`): instances bought
on-demand for the whole replay, one job per instance at a time. A discipline decides only
*which waiting job goes next* or *which instance a job joins*; what each job runs on (the
fleet's instance type for its needs) is ``decide()``'s on-demand choice, like every other
policy.

* ``fcfs`` — one queue per instance pool, by submission time.
* ``priority`` — realtime, then high, then batch; FCFS within a priority.
* ``sjn`` — shortest job next, by (known) duration.
* ``edf`` — earliest deadline first.
* ``round-robin`` — each arriving job joins the next instance of its pool in turn; every
  instance serves its own queue first-come-first-served.
* ``wlb`` — weighted load balancing: a job joins the instance whose committed work, divided
  by its weight, is smallest. Weights are the instances' capacities; within a pool all
  instances are the same type, so this is join-the-least-loaded (by remaining work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prefect_cloudsched.core.needs import Priority

if TYPE_CHECKING:
    from prefect_cloudsched.simulate.jobs import Job

PRIORITY_RANK = {Priority.REALTIME: 0, Priority.HIGH: 1, Priority.BATCH: 2}


@dataclass(frozen=True, slots=True)
class QueueDiscipline:
    """How a fleet orders or assigns jobs.

    Attributes:
        name: CLI name.
        assign: ``queue`` (one shared queue per pool, ordered by ``order``),
            ``round-robin`` or ``least-loaded`` (a queue per instance).
        order: Sort key of a waiting job (``queue`` only); ``seq`` breaks ties.
    """

    name: str
    assign: Literal["queue", "round-robin", "least-loaded"]
    order: Callable[[Job, int], tuple] | None = None


FCFS = QueueDiscipline("fcfs", "queue", lambda job, seq: (job.submit_s, seq))
PRIORITY = QueueDiscipline(
    "priority", "queue", lambda job, seq: (PRIORITY_RANK[job.needs.priority], job.submit_s, seq)
)
SJN = QueueDiscipline("sjn", "queue", lambda job, seq: (job.duration_s, job.submit_s, seq))
EDF = QueueDiscipline("edf", "queue", lambda job, seq: (job.deadline_s, seq))
ROUND_ROBIN = QueueDiscipline("round-robin", "round-robin")
WLB = QueueDiscipline("wlb", "least-loaded")

DISCIPLINES = {d.name: d for d in (FCFS, ROUND_ROBIN, PRIORITY, SJN, EDF, WLB)}

__all__ = [
    "DISCIPLINES",
    "EDF",
    "FCFS",
    "PRIORITY",
    "PRIORITY_RANK",
    "ROUND_ROBIN",
    "SJN",
    "WLB",
    "QueueDiscipline",
]
