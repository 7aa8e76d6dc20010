"""The capacity program itself: build it with PuLP, solve it with CBC or HiGHS, read it back.

Kept apart from the candidates (what may be bought) and from the plan (what it means) so the
same program serves three callers: the plan, the all-on-demand baseline, and the replay of a
plan against the demand that actually happened (reservations fixed, unmet demand allowed at
a penalty so it is reported rather than made infeasible).

The model's parts and the solver call live in :mod:`.solver`, the staged route for large
programs in :mod:`.staged`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefect_cloudsched.core.catalog import PurchaseOption
from prefect_cloudsched.core.planning.candidates import Candidate, Quota
from prefect_cloudsched.core.planning.solver import (
    SOLVERS,
    Level,
    LinearSum,
    Model,
    Solution,
    SolverOptions,
    make_solver,
    run_stage,
)
from prefect_cloudsched.core.planning.staged import solve_staged

#: Unmet demand in a replay is priced far above any offer so it is used only when forced.
_UNMET_PENALTY_FACTOR = 100.0
#: Price of one unit of slack on a spot-cap or quota row (scaled by the row's size), so an
#: elastic solve breaks a cap only when nothing else can meet the demand.
_SLACK_PENALTY = 1e6


#: Staged solving (LP bound, reservations rounded, hours solved, then the full MILP warm
#: started) pays three solver calls; below this many hourly integer variables a single
#: direct solve is faster and is what runs.
STAGED_MIN_HOURLY_VARS = 3000


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


@dataclass(frozen=True, slots=True)
class ProgramRules:
    """What the program must respect.

    Attributes:
        spot_max_share: Spot units (weighted by band) per hour ≤ this share of demand.
        quotas: Concurrent limits.
        budget_usd: Highest total expected cost (``None``: no budget row).
        fixed_reserved: Reservations already held, per RESERVED offer key (a replay); ``None``
            lets the program choose them.
        allow_unmet: Demand may go unmet at a penalty (a replay reports it, never hides it).
        elastic: The caps become priced slack, to find which one binds.
    """

    spot_max_share: float
    quotas: Sequence[Quota] = ()
    budget_usd: float | None = None
    fixed_reserved: Mapping[str, int] | None = None
    allow_unmet: bool = False
    elastic: bool = False


class _Builder:
    """Builds the program row by row: reservations, then each demand level, then the budget.

    ``cost`` is the objective (expected USD + carbon price + penalties); ``money`` what the
    budget limits (expected USD only).
    """

    def __init__(
        self, demand: Mapping[str, np.ndarray], candidates: Sequence[Candidate], rules: ProgramRules
    ) -> None:
        import pulp

        self.rules = rules
        self.hours = len(next(iter(demand.values())))
        self.limits = {q.key: q.limit for q in rules.quotas}
        self.prob = pulp.LpProblem("capacity_plan", pulp.LpMinimize)
        self.cost = LinearSum()
        self.money = LinearSum()
        self.slack: dict[str, list[Any]] = defaultdict(list)
        self.top_price = max((c.hourly_cost for c in candidates), default=1.0)
        self.reserved_vars: dict[str, Any] = {}
        self.hourly_vars: list[tuple[list[int], Candidate, Any]] = []
        self.unmet_vars: list[tuple[list[int], str, Any]] = []
        self.levels: list[Level] = []

    def add_row(self, row: LinearSum, sense: int, rhs: float) -> None:
        import pulp

        self.prob.addConstraint(pulp.LpConstraint(row.expr(), sense=sense, rhs=rhs))

    def add_slack(self, name: str, row: LinearSum, penalty: float) -> Any:
        """A priced variable that lets ``row`` exceed its cap (elastic programs only)."""
        import pulp

        s = pulp.LpVariable(f"s_{name}{len(self.slack[name])}", 0)
        self.slack[name].append(s)
        self.cost.add(s, penalty)
        row.add(s, -1.0)
        return s

    def add_reservations(self, candidates: Sequence[Candidate]) -> None:
        import pulp

        fixed_reserved = self.rules.fixed_reserved
        for n, c in enumerate(candidates):
            if c.offer.option is PurchaseOption.RESERVED:
                fixed = None if fixed_reserved is None else fixed_reserved.get(c.offer.key, 0)
                var = fixed if fixed is not None else pulp.LpVariable(f"r{n}", 0, cat="Integer")
                self.reserved_vars[c.offer.key] = var
                self.cost.add(var, c.hourly_cost * self.hours)
                self.money.add(var, c.money_per_hour * self.hours)

    def add_group(
        self, group: Sequence[str], units_demand: Mapping[str, np.ndarray], members: list[Candidate]
    ) -> None:
        """One set of variables per distinct demand level of a group of coupled classes."""
        matrix = np.column_stack([units_demand[k] for k in group])
        levels, level_of = np.unique(matrix, axis=0, return_inverse=True)
        hours_of = defaultdict(list)
        for h, li in enumerate(level_of.ravel().tolist()):
            hours_of[li].append(h)
        for li, level in enumerate(levels):
            need = dict(zip(group, (float(v) for v in level), strict=True))
            if any(need.values()):
                self.add_level(need, hours_of[li], members)

    def add_level(self, need: dict[str, float], at: list[int], members: list[Candidate]) -> None:
        import pulp

        rules = self.rules
        weight = len(at)
        supply: dict[str, LinearSum] = defaultdict(LinearSum)
        spot_use: dict[str, LinearSum] = defaultdict(LinearSum)
        quota_use: dict[str, LinearSum] = defaultdict(LinearSum)
        record = Level(need, [], [])
        self.levels.append(record)
        for c in members:
            if c.offer.option is PurchaseOption.RESERVED:
                var = self.reserved_vars[c.offer.key]
                record.reserved.append((c, var))
            else:
                served = [(k, u) for k, u in c.units if need.get(k, 0) > 0]
                if not served:
                    continue
                bound = max(math.ceil(need[k] / u) for k, u in served)
                if not rules.elastic:
                    bound = min(bound, _cap_bound(c, need, rules.spot_max_share, self.limits))
                var = pulp.LpVariable(f"h{len(self.hourly_vars)}", 0, bound, cat="Integer")
                self.hourly_vars.append((at, c, var))
                record.hourly.append((c, var))
                self.cost.add(var, weight * c.hourly_cost)
                self.money.add(var, weight * c.money_per_hour)
                if c.offer.option is PurchaseOption.SPOT:
                    for k, u in c.units:
                        spot_use[k].add(var, c.weight * u)
            for k, u in c.units:
                supply[k].add(var, u)
            for scope, u in c.scopes:
                quota_use[scope].add(var, u)
        for k, amount in need.items():
            if amount <= 0:
                continue
            row = supply[k]
            if rules.allow_unmet:
                short = pulp.LpVariable(f"u{len(self.unmet_vars)}", 0)
                self.unmet_vars.append((at, k, short))
                self.cost.add(short, weight * _UNMET_PENALTY_FACTOR * self.top_price)
                row.add(short, 1.0)
            self.add_row(row, pulp.LpConstraintGE, amount)
            if spot_use[k]:
                cap = spot_use[k]
                if rules.elastic:
                    self.add_slack("spot", cap, _SLACK_PENALTY / amount)
                self.add_row(cap, pulp.LpConstraintLE, rules.spot_max_share * amount)
        for scope, row in quota_use.items():
            if rules.elastic:
                s = self.add_slack("quota", row, _SLACK_PENALTY / max(self.limits[scope], 1.0))
                self.slack["quota:" + scope].append(s)
            self.add_row(row, pulp.LpConstraintLE, self.limits[scope])

    def add_budget(self) -> None:
        import pulp

        budget_usd = self.rules.budget_usd
        if budget_usd is None:
            return
        if self.rules.elastic:
            # A dollar over budget costs a dollar: the slack found is the shortfall.
            s = pulp.LpVariable("s_budget", 0)
            self.slack["budget"].append(s)
            self.cost.add(s, 1.0)
            self.money.add(s, -1.0)
        self.add_row(self.money, pulp.LpConstraintLE, budget_usd)

    def model(self) -> Model:
        self.prob.setObjective(self.cost.expr())
        return Model(
            self.prob,
            self.reserved_vars,
            self.hourly_vars,
            self.unmet_vars,
            self.slack,
            self.levels,
            self.limits,
            self.rules.spot_max_share,
        )


def _build(
    demand: Mapping[str, np.ndarray], candidates: Sequence[Candidate], rules: ProgramRules
) -> Model:
    builder = _Builder(demand, candidates, rules)
    builder.add_reservations(candidates)
    units_demand = {k: whole_units(v) for k, v in demand.items()}
    for group in _components(list(demand), candidates):
        in_group = set(group)
        members = [c for c in candidates if any(k in in_group for k, _ in c.units)]
        builder.add_group(group, units_demand, members)
    builder.add_budget()
    return builder.model()


def _cap_bound(
    c: Candidate, need: Mapping[str, float], share: float, limits: Mapping[str, float]
) -> int:
    """Most instances of an hourly offer that the spot cap and the quotas allow on their own.

    Exact, not a heuristic: every other term of a spot-cap or quota row is >= 0, so an
    integer plan can never hold more than ``floor(cap / units)`` of one offer. Stated as the
    variable's bound it keeps the LP from buying, say, 0.24 of a 1.9 TB spot machine whose
    single instance is over the cap — the LP bound rises and nothing feasible is cut off.
    """
    most = math.inf
    if c.offer.option is PurchaseOption.SPOT:
        for k, u in c.units:
            if need.get(k, 0) > 0:
                most = min(most, math.floor(share * need[k] / (c.weight * u) + 1e-9))
    for scope, u in c.scopes:
        most = min(most, math.floor(limits[scope] / u + 1e-9))
    return int(min(most, 2**31))


def solve_program(
    demand: Mapping[str, np.ndarray],
    candidates: Sequence[Candidate],
    rules: ProgramRules,
    options: SolverOptions,
    *,
    start: Solution | None = None,
) -> tuple[Solution, dict[str, float]]:
    """Build and solve the program; ``elastic`` adds slack to spot, quota and budget rows.

    Hours are independent once the reservations are fixed, so hours with the same demand
    (in whole units) of every coupled class share one set of hourly variables weighted by how
    often that demand occurs. This is exact, and turns 720 hourly copies into the number of
    distinct demand levels (tens, for one GPU class). ``start`` (e.g. the all-on-demand
    solution) is handed to the solver as a first incumbent, so a time-limited solve returns a
    plan no worse than it.

    Large programs (at least :data:`STAGED_MIN_HOURLY_VARS` hourly integer variables, with
    reservations to choose) are solved in stages, see :func:`solve_staged`; the model is the
    same, only the route to its optimum differs.
    """
    started = time.perf_counter()
    hours = len(next(iter(demand.values())))
    model = _build(demand, candidates, rules)
    build_seconds = time.perf_counter() - started
    free_reserved = [v for v in model.reserved_vars.values() if not isinstance(v, int)]
    solution = Solution("infeasible", {}, [{} for _ in range(hours)], [{} for _ in range(hours)],
                        {}, 0, build_seconds=build_seconds)  # fmt: skip
    if start is not None:
        _set_start(model, start)
    solver, gap, threads = options.name, options.gap, options.threads
    budget_s = options.time_limit_s - build_seconds
    if free_reserved and len(model.hourly_vars) >= STAGED_MIN_HOURLY_VARS:
        solve_staged(model, solution, solver, budget_s, gap, threads, start is not None)
    else:
        run_stage(model, solution, "milp", solver, budget_s, gap, threads, warm=start is not None)
    needed = _read(model, solution, hours) if solution.status != "infeasible" else {}
    solution.seconds = time.perf_counter() - started
    return solution, needed


def _set_start(model: Model, start: Solution) -> None:
    for key, var in model.reserved_vars.items():
        if not isinstance(var, int):
            var.setInitialValue(start.reserved.get(key, 0), check=False)
    for at, c, var in model.hourly_vars:
        mix = start.spot if c.offer.option is PurchaseOption.SPOT else start.ondemand
        var.setInitialValue(mix[at[0]].get(c.offer.key, 0), check=False)
    for v in model.prob.variables():
        if v.varValue is None:
            v.setInitialValue(0)


def _read(model: Model, solution: Solution, hours: int) -> dict[str, float]:
    for key, var in model.reserved_vars.items():
        count = var if isinstance(var, int) else round(var.value() or 0)
        if count:
            solution.reserved[key] = count
    for at, c, var in model.hourly_vars:
        count = round(var.value() or 0)
        if count:
            mix = solution.spot if c.offer.option is PurchaseOption.SPOT else solution.ondemand
            for h in at:
                mix[h][c.offer.key] = count
    for at, k, var in model.unmet_vars:
        series = solution.unmet.setdefault(k, [0.0] * hours)
        for h in at:
            series[h] = float(var.value() or 0)
    return {
        name: max((float(v.value() or 0) for v in vs), default=0.0)
        for name, vs in model.slack.items()
    }


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


__all__ = [
    "SOLVERS",
    "STAGED_MIN_HOURLY_VARS",
    "ProgramRules",
    "Solution",
    "SolverOptions",
    "make_solver",
    "solution_costs",
    "solve_program",
    "whole_units",
]
