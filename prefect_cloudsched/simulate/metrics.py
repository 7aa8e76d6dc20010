"""Per-policy figures of a replay: cost, deadlines, completion, utilisation, energy, speed.

Definitions (the docs quote them):

* ``cost`` — everything paid: on-demand and spot seconds (60-s minimum per instance),
  reserved instances × amortised rate × the replay (time 0 to the last completion), and
  for the fixed fleet every instance × price × the replay. USD. ``cost_by_option`` splits
  the reservation as the ledger would (:mod:`prefect_cloudsched.core.accounting`):
  ``reserved`` is what jobs were charged for the time they held it, ``reserved (idle)``
  the rest of the commitment.
* ``cost_vs_ondemand`` — ÷ the on-demand-only policy's cost on the same jobs.
* ``cost_vs_bound`` — ÷ the omniscient lower bound on the same jobs.
* ``deadline_miss_rate`` — share of placed jobs finishing after their deadline.
* completion time — finish − submit, seconds; ``makespan_s`` — last finish, from time 0.
* ``utilisation`` — busy ÷ paid instance-time of held capacity (the hybrid's reservation,
  or the fleet); ``None`` when a policy holds none.
* ``energy_kwh``/``co2_kg`` — :mod:`prefect_cloudsched.core.energy` over every instance-second
  (fleet idle time at idle power).
* decision latency — wall time in ``decide()`` (memo included) per job; ``jobs_per_s`` —
  placed jobs ÷ wall time of the replay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prefect_cloudsched.core.accounting import commitment_usd
from prefect_cloudsched.simulate.engine import ElasticOutcome, JobRun
from prefect_cloudsched.simulate.fleet import FleetOutcome

#: ``cost_by_option`` key of the reservation hours no job held (paid whether used or not).
RESERVED_IDLE = "reserved (idle)"


@dataclass
class PolicyResult:
    """One policy's figures (``to_dict`` is the CLI's ``--json`` object)."""

    policy: str
    capacity_model: str
    jobs: int
    unplaceable: int
    cost: float
    cost_by_option: dict[str, float]
    deadline_misses: int
    deadline_miss_rate: float
    mean_completion_s: float
    p95_completion_s: float
    makespan_s: float
    utilisation: float | None
    energy_kwh: float
    co2_kg: float
    interruptions: int
    decide_calls: int
    decision_latency_mean_us: float
    decision_latency_p99_us: float
    wall_s: float
    jobs_per_s: float
    placed: list[int] = field(default_factory=list, repr=False)
    cost_vs_ondemand: float | None = None
    cost_vs_bound: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded."""
        data = asdict(self)
        data.pop("placed")
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 6)
        data["cost_by_option"] = {k: round(v, 4) for k, v in self.cost_by_option.items()}
        return data


def _timing(runs: list[JobRun], placed: int, wall_s: float) -> dict[str, float]:
    latency = np.fromiter((r.decide_s for r in runs), float, len(runs)) * 1e6
    return {
        "decision_latency_mean_us": float(latency.mean()) if latency.size else 0.0,
        "decision_latency_p99_us": float(np.percentile(latency, 99)) if latency.size else 0.0,
        "wall_s": wall_s,
        "jobs_per_s": placed / wall_s if wall_s > 0 else 0.0,
    }


def _completion(runs: list[JobRun]) -> dict[str, float | int]:
    if not runs:
        return dict(deadline_misses=0, deadline_miss_rate=0.0, mean_completion_s=0.0,
                    p95_completion_s=0.0, makespan_s=0.0)  # fmt: skip
    finish = np.fromiter((r.finish or 0.0 for r in runs), float, len(runs))
    submit = np.fromiter((r.job.submit_s for r in runs), float, len(runs))
    deadline = np.fromiter((r.job.deadline_s for r in runs), float, len(runs))
    misses = int((finish > deadline + 1e-6).sum())
    completion = finish - submit
    return {
        "deadline_misses": misses,
        "deadline_miss_rate": misses / len(runs),
        "mean_completion_s": float(completion.mean()),
        "p95_completion_s": float(np.percentile(completion, 95)),
        "makespan_s": float(finish.max()),
    }


def summarise_elastic(name: str, outcome: ElasticOutcome) -> PolicyResult:
    """Figures of an elastic-cloud replay, reservation charged over the whole replay."""
    runs = outcome.runs
    by_option: dict[str, float] = {}
    for run in runs:
        for option, usd in run.cost_by_option.items():
            by_option[option] = by_option.get(option, 0.0) + usd
    done = _completion(runs)
    makespan = float(done["makespan_s"])
    held_s = sum(n for _, n in outcome.reserved.values()) * makespan
    if outcome.reserved:
        commitment = sum(commitment_usd(o, n, makespan) for o, n in outcome.reserved.values())
        used = by_option.get("reserved", 0.0)
        by_option["reserved"] = used
        by_option[RESERVED_IDLE] = max(0.0, commitment - used)
    return PolicyResult(
        policy=name,
        capacity_model="elastic",
        jobs=len(runs),
        unplaceable=len(outcome.unplaceable),
        cost=sum(by_option.values()),
        cost_by_option=by_option,
        utilisation=outcome.reserved_busy_s / held_s if held_s > 0 else None,
        energy_kwh=sum(r.kwh for r in runs),
        co2_kg=sum(r.co2_g for r in runs) / 1000,
        interruptions=sum(r.interruptions for r in runs),
        decide_calls=outcome.decide_calls,
        placed=[r.index for r in runs],
        **done,
        **_timing(runs, len(runs), outcome.wall_s),
    )


def summarise_fleet(name: str, outcome: FleetOutcome) -> PolicyResult:
    """Figures of a fixed-fleet replay: the fleet is paid from time 0 to the last completion."""
    runs = outcome.runs
    done = _completion(runs)
    makespan = outcome.makespan_s
    cost = sum(p.size * p.offer.usd_per_hour for p in outcome.pools.values()) * makespan / 3600
    held_s = sum(p.size for p in outcome.pools.values()) * makespan
    busy_s = sum(p.busy_s for p in outcome.pools.values())
    return PolicyResult(
        policy=name,
        capacity_model="fleet",
        jobs=len(runs),
        unplaceable=len(outcome.unplaceable),
        cost=cost,
        cost_by_option={"on-demand": cost},
        utilisation=busy_s / held_s if held_s > 0 else None,
        energy_kwh=outcome.kwh,
        co2_kg=outcome.co2_g / 1000,
        interruptions=0,
        decide_calls=outcome.decide_calls,
        placed=[r.index for r in runs],
        **done,
        **_timing(runs, len(runs), outcome.wall_s),
    )


__all__ = ["RESERVED_IDLE", "PolicyResult", "summarise_elastic", "summarise_fleet"]
