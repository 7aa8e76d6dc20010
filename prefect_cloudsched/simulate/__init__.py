"""Trace-replay simulator: the policies side by side on real jobs and real spot traces.

It drives the task runner's own ``prefect_cloudsched.core.policy.decide()`` with a simulated
clock; there is no simulation-only copy of the placement policy. See ``docs/simulator.md``.

* :mod:`.jobs` — trace loading, deadline/priority synthesis, tiling.
* :mod:`.spot` — spot availability: real trace replay or a parametric model.
* :mod:`.engine` — the elastic-cloud event loop (on-demand, spot, greedy, UP, hybrid).
* :mod:`.fleet` — the fixed-fleet event loop (FCFS, RR, priority, SJN, EDF, WLB).
* :mod:`.bound` — the omniscient lower bound.
* :mod:`.metrics` — per-policy figures; :mod:`.compare` — all of it on one replay.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy re-exports: the policy modules import the engine, and the engine package must not
# import them back at import time.
_EXPORTS = {
    "POLICY_NAMES": "compare",
    "Comparison": "compare",
    "compare_policies": "compare",
    "parse_policies": "compare",
    "Job": "jobs",
    "load_jobs": "jobs",
    "parse_slack": "jobs",
    "tile_jobs": "jobs",
    "SpotModel": "spot",
    "load_spot_trace": "spot",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = sorted(_EXPORTS)
