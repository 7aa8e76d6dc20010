"""Trace-replay simulator: the policies side by side on real jobs and real spot traces.

It drives the task runner's own ``prefect_cloudsched.policy.decide()`` with a simulated
clock; there is no simulation-only copy of the placement policy. See ``docs/simulator.md``.

* :mod:`.jobs` — trace loading, deadline/priority synthesis, tiling.
* :mod:`.spot` — spot availability: real trace replay or a parametric model.
* :mod:`.engine` — the elastic-cloud event loop (on-demand, spot, greedy, UP, hybrid).
* :mod:`.fleet` — the fixed-fleet event loop (FCFS, RR, priority, SJN, EDF, WLB).
* :mod:`.bound` — the omniscient lower bound.
* :mod:`.metrics` — per-policy figures; :mod:`.compare` — all of it on one replay.
"""

from prefect_cloudsched.simulate.compare import (
    POLICY_NAMES,
    Comparison,
    compare_policies,
    parse_policies,
)
from prefect_cloudsched.simulate.jobs import Job, load_jobs, parse_slack, tile_jobs
from prefect_cloudsched.simulate.spot import SpotModel, load_spot_trace

__all__ = [
    "POLICY_NAMES",
    "Comparison",
    "Job",
    "SpotModel",
    "compare_policies",
    "load_jobs",
    "load_spot_trace",
    "parse_policies",
    "parse_slack",
    "tile_jobs",
]
