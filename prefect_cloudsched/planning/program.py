"""The capacity program itself: build it with PuLP, solve it with CBC or HiGHS, read it back.

Kept apart from the candidates (what may be bought) and from the plan (what it means) so the
same program serves three callers: the plan, the all-on-demand baseline, and the replay of a
plan against the demand that actually happened (reservations fixed, unmet demand allowed at
a penalty so it is reported rather than made infeasible).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefect_cloudsched.catalog import PurchaseOption
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.planning.candidates import Candidate, Quota

SOLVERS = ("cbc", "highs")
#: Unmet demand in a replay is priced far above any offer so it is used only when forced.
_UNMET_PENALTY_FACTOR = 100.0


@dataclass
class Solution:
    """Counts read back from a solved program (empty when infeasible)."""

    status: str
    reserved: dict[str, int]
    ondemand: list[dict[str, int]]
    spot: list[dict[str, int]]
    unmet: dict[str, list[float]]
    seconds: float
    proven_infeasible: bool = False


def make_solver(name: str, time_limit_s: float, gap: float, warm_start: bool = False) -> Any:
    """A PuLP solver object; one thread, as the planner shares the machine with the flows."""
    import pulp

    if name == "cbc":
        return pulp.PULP_CBC_CMD(
            msg=False, timeLimit=time_limit_s, gapRel=gap, threads=1, warmStart=warm_start
        )
    if name == "highs":
        return pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap, threads=1)
    raise InputError(f"solver {name!r} is unknown; use one of: {', '.join(SOLVERS)}")


def whole_units(series: np.ndarray) -> np.ndarray:
    """Demand rounded up to whole units: integer instances can only supply whole GPUs/vCPUs."""
    return np.ceil(np.round(np.asarray(series, dtype=float), 6))


def _components(classes: Sequence[str], candidates: Sequence[Candidate]) -> list[list[str]]:
    """Classes coupled by a shared offer (vCPU + memory) or a shared quota, together."""
    parent = {k: k for k in classes}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    by_scope: dict[str, str] = {}
    for c in candidates:
        linked = [k for k, _ in c.units if k in parent]
        for scope, _ in c.scopes:
            if scope in by_scope:
                linked.append(by_scope[scope])
            elif linked:
                by_scope[scope] = linked[0]
        for k in linked[1:]:
            parent[root(k)] = root(linked[0])
    groups: dict[str, list[str]] = defaultdict(list)
    for k in classes:
        groups[root(k)].append(k)
    return list(groups.values())


def solve_program(
    demand: Mapping[str, np.ndarray],
    candidates: Sequence[Candidate],
    *,
    spot_max_share: float,
    quotas: Sequence[Quota],
    budget_usd: float | None,
    fixed_reserved: Mapping[str, int] | None,
    allow_unmet: bool,
    elastic: bool,
    solver: str,
    time_limit_s: float,
    gap: float,
    start: Solution | None = None,
) -> tuple[Solution, dict[str, float]]:
    """Build and solve the program; ``elastic`` adds slack to spot, quota and budget rows.

    Hours are independent once the reservations are fixed, so hours with the same demand
    (in whole units) of every coupled class share one set of hourly variables weighted by how
    often that demand occurs. This is exact, and turns 720 hourly copies into the number of
    distinct demand levels (tens, for one GPU class). ``start`` (e.g. the all-on-demand
    solution) is handed to CBC as a first incumbent, so a time-limited solve returns a plan
    no worse than it.
    """
    import pulp

    started = time.perf_counter()
    hours = len(next(iter(demand.values())))
    units_demand = {k: whole_units(v) for k, v in demand.items()}
    limits = {q.key: q.limit for q in quotas}
    prob = pulp.LpProblem("capacity_plan", pulp.LpMinimize)
    cost_terms: list[Any] = []  # objective: expected USD + carbon price
    money_terms: list[Any] = []  # what the budget limits: expected USD only
    penalty_terms: list[Any] = []
    slack: dict[str, list[Any]] = defaultdict(list)
    penalty = 1e6
    top_price = max((c.hourly_cost for c in candidates), default=1.0)

    reserved_vars: dict[str, Any] = {}
    for n, c in enumerate(candidates):
        if c.offer.option is PurchaseOption.RESERVED:
            fixed = None if fixed_reserved is None else fixed_reserved.get(c.offer.key, 0)
            var = fixed if fixed is not None else pulp.LpVariable(f"r{n}", 0, cat="Integer")
            reserved_vars[c.offer.key] = var
            cost_terms.append(c.hourly_cost * hours * var)
            money_terms.append(c.money_per_hour * hours * var)

    hourly_vars: list[tuple[list[int], Candidate, Any]] = []
    unmet_vars: list[tuple[list[int], str, Any]] = []
    for group in _components(list(demand), candidates):
        members = [c for c in candidates if any(k in group for k, _ in c.units)]
        matrix = np.column_stack([units_demand[k] for k in group])
        levels, level_of = np.unique(matrix, axis=0, return_inverse=True)
        for li, level in enumerate(levels):
            need = dict(zip(group, (float(v) for v in level), strict=True))
            if not any(need.values()):
                continue
            at = [int(h) for h in np.flatnonzero(level_of.ravel() == li)]
            weight = len(at)
            supply: dict[str, list[Any]] = defaultdict(list)
            spot_use: dict[str, list[Any]] = defaultdict(list)
            quota_use: dict[str, list[Any]] = defaultdict(list)
            for c in members:
                if c.offer.option is PurchaseOption.RESERVED:
                    var = reserved_vars[c.offer.key]
                else:
                    served = [(k, u) for k, u in c.units if need.get(k, 0) > 0]
                    if not served:
                        continue
                    bound = max(math.ceil(need[k] / u) for k, u in served)
                    var = pulp.LpVariable(f"h{len(hourly_vars)}", 0, bound, cat="Integer")
                    hourly_vars.append((at, c, var))
                    if start is not None:
                        mix = (
                            start.spot if c.offer.option is PurchaseOption.SPOT else start.ondemand
                        )
                        var.setInitialValue(mix[at[0]].get(c.offer.key, 0))
                    cost_terms.append(weight * c.hourly_cost * var)
                    money_terms.append(weight * c.money_per_hour * var)
                    if c.offer.option is PurchaseOption.SPOT:
                        for k, u in c.units:
                            spot_use[k].append(c.weight * u * var)
                for k, u in c.units:
                    supply[k].append(u * var)
                for scope, u in c.scopes:
                    quota_use[scope].append(u * var)
            for k, amount in need.items():
                if amount <= 0:
                    continue
                terms = supply[k]
                if allow_unmet:
                    short = pulp.LpVariable(f"u{len(unmet_vars)}", 0)
                    unmet_vars.append((at, k, short))
                    penalty_terms.append(weight * _UNMET_PENALTY_FACTOR * top_price * short)
                    terms = [*terms, short]
                prob += pulp.lpSum(terms) >= amount
                if spot_use[k]:
                    cap = spot_max_share * amount
                    if elastic:
                        s = pulp.LpVariable(f"s_spot{len(slack['spot'])}", 0)
                        slack["spot"].append(s)
                        penalty_terms.append(penalty * s / amount)
                        cap = cap + s
                    prob += pulp.lpSum(spot_use[k]) <= cap
            for scope, terms in quota_use.items():
                limit: Any = limits[scope]
                if elastic:
                    s = pulp.LpVariable(f"s_quota{len(slack['quota'])}", 0)
                    slack["quota"].append(s)
                    slack["quota:" + scope].append(s)
                    penalty_terms.append(penalty * s / max(limits[scope], 1.0))
                    limit = limit + s
                prob += pulp.lpSum(terms) <= limit

    money = pulp.lpSum(money_terms)
    if budget_usd is not None:
        if elastic:
            # A dollar over budget costs a dollar: the slack found is the shortfall.
            s = pulp.LpVariable("s_budget", 0)
            slack["budget"].append(s)
            penalty_terms.append(s)
            prob += money <= budget_usd + s
        else:
            prob += money <= budget_usd
    prob += pulp.lpSum(cost_terms) + pulp.lpSum(penalty_terms)
    if start is not None:
        for key, var in reserved_vars.items():
            if not isinstance(var, int):
                var.setInitialValue(start.reserved.get(key, 0))
    prob.solve(make_solver(solver, time_limit_s, gap, warm_start=start is not None))

    status = {1: "optimal", 2: "feasible"}.get(prob.sol_status, "infeasible")
    solution = Solution(status, {}, [{} for _ in range(hours)], [{} for _ in range(hours)], {}, 0)
    solution.proven_infeasible = prob.status == pulp.LpStatusInfeasible
    needed: dict[str, float] = {}
    if status != "infeasible":
        for key, var in reserved_vars.items():
            count = var if isinstance(var, int) else round(var.value() or 0)
            if count:
                solution.reserved[key] = count
        for at, c, var in hourly_vars:
            count = round(var.value() or 0)
            if count:
                mix = solution.spot if c.offer.option is PurchaseOption.SPOT else solution.ondemand
                for h in at:
                    mix[h][c.offer.key] = count
        for at, k, var in unmet_vars:
            series = solution.unmet.setdefault(k, [0.0] * hours)
            for h in at:
                series[h] = float(var.value() or 0)
        needed = {
            name: max((float(v.value() or 0) for v in vs), default=0.0)
            for name, vs in slack.items()
        }
    solution.seconds = time.perf_counter() - started
    return solution, needed


def solution_costs(
    solution: Solution, candidates: Sequence[Candidate], hours: int
) -> tuple[float, float, float, float]:
    """USD (reserved, on-demand, spot) and tCO2e of a solution, spot at expected cost."""
    by_key = {c.offer.key: c for c in candidates}
    reserved = sum(by_key[k].money_per_hour * n * hours for k, n in solution.reserved.items())
    tonnes = sum(by_key[k].tonnes_per_hour * n * hours for k, n in solution.reserved.items())
    ondemand = spot = 0.0
    for mix_od, mix_spot in zip(solution.ondemand, solution.spot, strict=True):
        ondemand += sum(by_key[k].money_per_hour * n for k, n in mix_od.items())
        spot += sum(by_key[k].money_per_hour * n for k, n in mix_spot.items())
        tonnes += sum(by_key[k].tonnes_per_hour * n for k, n in (mix_od | mix_spot).items())
    return reserved, ondemand, spot, tonnes


__all__ = ["SOLVERS", "Solution", "make_solver", "solution_costs", "solve_program", "whole_units"]
