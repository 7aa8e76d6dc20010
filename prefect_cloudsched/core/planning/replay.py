"""Replay a plan against the demand that actually happened.

The benchmark's question — was the plan made from a forecast good? — and the trace
simulator's: reservations are fixed as planned; every hour buys the cheapest on-demand/spot
mix on top of them under the same spot cap, and demand that cannot be covered is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.planning.candidates import (
    NO_SPOT,
    Candidate,
    parse_quotas,
    select_candidates,
    units_of,
)
from prefect_cloudsched.core.planning.capacity import CapacityPlan, check_options, validate_demand
from prefect_cloudsched.core.planning.program import (
    ProgramRules,
    SolverOptions,
    solution_costs,
    solve_program,
)
from prefect_cloudsched.errors import InputError


@dataclass
class ReplayResult:
    """What serving an actual demand series with fixed reservations cost.

    Attributes:
        cost: Total USD (reserved + on-demand + spot, spot at expected cost).
        reserved_cost: USD for the reservations over the series.
        ondemand_cost: USD for on-demand instances.
        spot_cost: USD for spot instances.
        unmet_hours: Hours whose demand could not be covered under the constraints.
        unmet_units: Demand units left uncovered, summed over hours and classes.
        reserved_utilization: Per class, the share of reserved unit-hours that demand used.
        status: Solver status of the replay.
    """

    cost: float
    reserved_cost: float
    ondemand_cost: float
    spot_cost: float
    unmet_hours: list[int]
    unmet_units: float
    reserved_utilization: dict[str, float]
    status: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "cost": round(self.cost, 6),
            "reserved_cost": round(self.reserved_cost, 6),
            "ondemand_cost": round(self.ondemand_cost, 6),
            "spot_cost": round(self.spot_cost, 6),
            "unmet_hours": list(self.unmet_hours),
            "unmet_units": round(self.unmet_units, 6),
            "reserved_utilization": {k: round(v, 4) for k, v in self.reserved_utilization.items()},
            "status": self.status,
        }


def replay_plan(
    plan_reserved: CapacityPlan | Mapping[str, int],
    actual_demand: Mapping[str, Sequence[float]],
    catalog: Catalog,
    *,
    spot_max_share: float = 0.5,
    solver: str = "cbc",
    time_limit_s: float = 60,
    gap: float = 0.01,
    quotas: Mapping[str, float] | None = None,
    clouds: Sequence[str] | None = None,
    regions: Sequence[str] | None = None,
    max_candidates: int = 3,
) -> ReplayResult:
    """Cost of serving ``actual_demand`` with fixed reservations plus the best hourly mix.

    Each hour buys the cheapest on-demand/spot mix on top of the reservations, under the
    same spot cap (and quotas); an hour that cannot be covered is reported in
    ``unmet_hours``, never hidden.

    Args:
        plan_reserved: A plan, or ``{capacity_key: count}`` of reservations held.
        actual_demand: Per resource class, the hourly demand that happened.
        catalog: Offers (the reservations' RESERVED offers must be in it).
        spot_max_share, solver, time_limit_s, gap, quotas, clouds, regions, max_candidates:
            As in :func:`plan_capacity` (the replay's candidates and solve use the same rules).
    """
    held: list[tuple[str, int]] = (
        [(r.capacity_key, r.count) for r in plan_reserved.reserved]
        if isinstance(plan_reserved, CapacityPlan)
        else [(key, int(count)) for key, count in plan_reserved.items()]
    )
    series = validate_demand(actual_demand, catalog, 0.5)
    check_options(spot_max_share, None, max_candidates, time_limit_s, gap, solver)
    parsed_quotas = parse_quotas(quotas, catalog)
    hours = len(next(iter(series.values())))
    options = NO_SPOT - {PurchaseOption.RESERVED}
    if spot_max_share > 0:
        options |= {PurchaseOption.SPOT}
    candidates = select_candidates(
        list(series),
        catalog,
        options=frozenset(options),
        clouds=clouds,
        regions=regions,
        quotas=parsed_quotas,
        max_candidates=max_candidates,
        carbon_usd_per_tonne=None,
        carbon_intensity=None,
        power_kw=None,
    )
    fixed: dict[str, int] = {}
    for capacity_key, count in held:
        offer = _reserved_offer(catalog, capacity_key)
        offer_key = offer.key
        units = units_of(offer, list(series))
        scopes = tuple((q.key, u) for q in parsed_quotas if (u := q.usage(offer)) > 0)
        candidates.append(
            Candidate(offer, units, offer.usd_per_hour, offer.usd_per_hour, 1.0, scopes, 0.0)
        )
        fixed[offer_key] = int(count)
    rules = ProgramRules(spot_max_share, parsed_quotas, fixed_reserved=fixed, allow_unmet=True)
    solution, _ = solve_program(series, candidates, rules, SolverOptions(solver, time_limit_s, gap))
    reserved_cost, od_cost, spot_cost, _ = solution_costs(solution, candidates, hours)
    unmet_hours = sorted(
        {h for values in solution.unmet.values() for h, v in enumerate(values) if v > 1e-6}
    )
    utilization: dict[str, float] = {}
    for k, a in series.items():
        units = sum(
            dict(c.units).get(k, 0.0) * fixed[c.offer.key]
            for c in candidates
            if c.offer.key in fixed
        )
        if units > 0:
            utilization[k] = float(np.minimum(a, units).sum() / (units * hours))
    return ReplayResult(
        cost=reserved_cost + od_cost + spot_cost,
        reserved_cost=reserved_cost,
        ondemand_cost=od_cost,
        spot_cost=spot_cost,
        unmet_hours=unmet_hours,
        unmet_units=sum(sum(v) for v in solution.unmet.values()),
        reserved_utilization=utilization,
        status=solution.status,
    )


def _reserved_offer(catalog: Catalog, capacity_key: str) -> Offer:
    """The RESERVED offer of a capacity key (keys name attached GPUs, so it is unique)."""
    try:
        return catalog.find(f"{capacity_key}/{PurchaseOption.RESERVED.value}")
    except KeyError:
        raise InputError(
            f"reservation {capacity_key!r} has no reserved offer in the catalog; re-plan"
        ) from None


__all__ = ["ReplayResult", "replay_plan"]
