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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefect_cloudsched.core.catalog import PurchaseOption
from prefect_cloudsched.core.planning.candidates import Candidate, Quota
from prefect_cloudsched.errors import InputError

SOLVERS = ("cbc", "highs")
#: Unmet demand in a replay is priced far above any offer so it is used only when forced.
_UNMET_PENALTY_FACTOR = 100.0


@dataclass
class Solution:
    """Counts read back from a solved program (empty when infeasible).

    ``build_seconds`` is the time spent building the PuLP model, ``solver_seconds`` the time
    in solver calls (including writing the model for CBC); ``bound`` is the LP-relaxation
    bound of a staged solve (a lower bound on any plan's objective) and ``stages`` says
    which solver calls ran, for the benchmark.
    """

    status: str
    reserved: dict[str, int]
    ondemand: list[dict[str, int]]
    spot: list[dict[str, int]]
    unmet: dict[str, list[float]]
    seconds: float
    proven_infeasible: bool = False
    build_seconds: float = 0.0
    solver_seconds: float = 0.0
    objective: float | None = None
    bound: float | None = None
    stages: list[str] = field(default_factory=list)

    @property
    def lp_gap(self) -> float | None:
        """(objective − LP bound) / objective: an upper bound on the distance from the optimum.

        Known for staged solves only; when the MILP stage ran, the solver's own (cut-tightened)
        bound decided the status and the true gap is usually far smaller than this.
        """
        if self.objective is None or self.bound is None or self.objective <= 0:
            return None
        return max(0.0, (self.objective - self.bound) / self.objective)


#: Staged solving (LP bound, reservations rounded, hours solved, then the full MILP warm
#: started) pays three solver calls; below this many hourly integer variables a single
#: direct solve is faster and is what runs.
STAGED_MIN_HOURLY_VARS = 3000


#: CBC options for the last stage of a staged solve, which starts from a good incumbent and
#: mostly has to prove the bound: one round of root cuts (the rounds after the first add
#: little bound on these programs and cost tens of seconds at 10^5 columns), without probing
#: and two-step MIR, the two slowest generators here. Branching then continues as usual if
#: the gap is not closed at the root.
_BOUND_ONLY_CBC = ("passCuts 1", "probing off", "twoMirCuts off")


def make_solver(
    name: str,
    time_limit_s: float,
    gap: float,
    warm_start: bool = False,
    *,
    threads: int = 1,
    mip: bool = True,
    options: Sequence[str] = (),
) -> Any:
    """A PuLP solver object (one thread unless told: the planner shares the machine)."""
    import pulp

    if name == "cbc":
        # CBC 2.10.3 (PuLP's bundled binary) segfaults when its preprocessing meets a complete
        # MIP start on large models (95k columns in the 720 h benchmark); with preprocessing
        # off the start is used and the root cuts still run.
        cbc_options = [*options, *(["preprocess off"] if warm_start else [])]
        return pulp.PULP_CBC_CMD(
            msg=False,
            timeLimit=max(time_limit_s, 0.1),
            gapRel=gap,
            threads=threads,
            warmStart=warm_start,
            mip=mip,
            options=cbc_options,
        )
    if name == "highs":
        # One thread whatever is asked: HiGHS keeps one thread pool per process, and a later
        # solve asking for a different count fails (the packing program, after a 2-thread
        # capacity plan, came back without a solution).
        return pulp.HiGHS(
            msg=False, timeLimit=max(time_limit_s, 0.1), gapRel=gap, threads=1, mip=mip
        )
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


class _Linear:
    """A linear expression collected as ``{variable: coefficient}`` plus a constant.

    PuLP's ``lpSum([u * var, ...])`` builds one intermediate expression per term; collecting
    coefficients in a dict and handing it to ``LpAffineExpression`` once built the 720 h
    benchmark models in 1.7 s instead of 4.7 s. Fixed reservations (plain ints) land in the
    constant.
    """

    __slots__ = ("coef", "const")

    def __init__(self) -> None:
        self.coef: dict[Any, float] = {}
        self.const = 0.0

    def add(self, var: Any, a: float) -> None:
        if isinstance(var, int | float):
            self.const += a * var
        else:
            self.coef[var] = self.coef.get(var, 0.0) + a

    def __bool__(self) -> bool:
        return bool(self.coef) or self.const != 0

    def expr(self) -> Any:
        import pulp

        return pulp.LpAffineExpression(self.coef, constant=self.const)


@dataclass
class _Model:
    prob: Any
    reserved_vars: dict[str, Any]
    hourly_vars: list[tuple[list[int], Candidate, Any]]
    unmet_vars: list[tuple[list[int], str, Any]]
    slack: dict[str, list[Any]]
    levels: list[_Level] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)
    spot_max_share: float = 0.0


@dataclass
class _Level:
    """One demand level of one group of coupled classes: its hours, demand and variables."""

    need: dict[str, float]
    hourly: list[tuple[Candidate, Any]]
    reserved: list[tuple[Candidate, Any]]


def _build(
    demand: Mapping[str, np.ndarray],
    candidates: Sequence[Candidate],
    *,
    spot_max_share: float,
    quotas: Sequence[Quota],
    budget_usd: float | None,
    fixed_reserved: Mapping[str, int] | None,
    allow_unmet: bool,
    elastic: bool,
) -> _Model:
    import pulp

    hours = len(next(iter(demand.values())))
    units_demand = {k: whole_units(v) for k, v in demand.items()}
    limits = {q.key: q.limit for q in quotas}
    prob = pulp.LpProblem("capacity_plan", pulp.LpMinimize)
    cost = _Linear()  # objective: expected USD + carbon price + penalties
    money = _Linear()  # what the budget limits: expected USD only
    slack: dict[str, list[Any]] = defaultdict(list)
    penalty = 1e6
    top_price = max((c.hourly_cost for c in candidates), default=1.0)

    def add_row(row: _Linear, sense: int, rhs: float) -> None:
        prob.addConstraint(pulp.LpConstraint(row.expr(), sense=sense, rhs=rhs))

    reserved_vars: dict[str, Any] = {}
    for n, c in enumerate(candidates):
        if c.offer.option is PurchaseOption.RESERVED:
            fixed = None if fixed_reserved is None else fixed_reserved.get(c.offer.key, 0)
            var = fixed if fixed is not None else pulp.LpVariable(f"r{n}", 0, cat="Integer")
            reserved_vars[c.offer.key] = var
            cost.add(var, c.hourly_cost * hours)
            money.add(var, c.money_per_hour * hours)

    hourly_vars: list[tuple[list[int], Candidate, Any]] = []
    unmet_vars: list[tuple[list[int], str, Any]] = []
    records: list[_Level] = []
    for group in _components(list(demand), candidates):
        in_group = set(group)
        members = [c for c in candidates if any(k in in_group for k, _ in c.units)]
        matrix = np.column_stack([units_demand[k] for k in group])
        levels, level_of = np.unique(matrix, axis=0, return_inverse=True)
        hours_of = defaultdict(list)
        for h, li in enumerate(level_of.ravel().tolist()):
            hours_of[li].append(h)
        for li, level in enumerate(levels):
            need = dict(zip(group, (float(v) for v in level), strict=True))
            if not any(need.values()):
                continue
            at = hours_of[li]
            weight = len(at)
            supply: dict[str, _Linear] = defaultdict(_Linear)
            spot_use: dict[str, _Linear] = defaultdict(_Linear)
            quota_use: dict[str, _Linear] = defaultdict(_Linear)
            record = _Level(need, [], [])
            records.append(record)
            for c in members:
                if c.offer.option is PurchaseOption.RESERVED:
                    var = reserved_vars[c.offer.key]
                    record.reserved.append((c, var))
                else:
                    served = [(k, u) for k, u in c.units if need.get(k, 0) > 0]
                    if not served:
                        continue
                    bound = max(math.ceil(need[k] / u) for k, u in served)
                    if not elastic:
                        bound = min(bound, _cap_bound(c, need, spot_max_share, limits))
                    var = pulp.LpVariable(f"h{len(hourly_vars)}", 0, bound, cat="Integer")
                    hourly_vars.append((at, c, var))
                    record.hourly.append((c, var))
                    cost.add(var, weight * c.hourly_cost)
                    money.add(var, weight * c.money_per_hour)
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
                if allow_unmet:
                    short = pulp.LpVariable(f"u{len(unmet_vars)}", 0)
                    unmet_vars.append((at, k, short))
                    cost.add(short, weight * _UNMET_PENALTY_FACTOR * top_price)
                    row.add(short, 1.0)
                add_row(row, pulp.LpConstraintGE, amount)
                if spot_use[k]:
                    cap = spot_use[k]
                    if elastic:
                        s = pulp.LpVariable(f"s_spot{len(slack['spot'])}", 0)
                        slack["spot"].append(s)
                        cost.add(s, penalty / amount)
                        cap.add(s, -1.0)
                    add_row(cap, pulp.LpConstraintLE, spot_max_share * amount)
            for scope, row in quota_use.items():
                if elastic:
                    s = pulp.LpVariable(f"s_quota{len(slack['quota'])}", 0)
                    slack["quota"].append(s)
                    slack["quota:" + scope].append(s)
                    cost.add(s, penalty / max(limits[scope], 1.0))
                    row.add(s, -1.0)
                add_row(row, pulp.LpConstraintLE, limits[scope])

    if budget_usd is not None:
        if elastic:
            # A dollar over budget costs a dollar: the slack found is the shortfall.
            s = pulp.LpVariable("s_budget", 0)
            slack["budget"].append(s)
            cost.add(s, 1.0)
            money.add(s, -1.0)
        add_row(money, pulp.LpConstraintLE, budget_usd)
    prob.setObjective(cost.expr())
    return _Model(
        prob, reserved_vars, hourly_vars, unmet_vars, slack, records, limits, spot_max_share
    )


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
    threads: int = 1,
) -> tuple[Solution, dict[str, float]]:
    """Build and solve the program; ``elastic`` adds slack to spot, quota and budget rows.

    Hours are independent once the reservations are fixed, so hours with the same demand
    (in whole units) of every coupled class share one set of hourly variables weighted by how
    often that demand occurs. This is exact, and turns 720 hourly copies into the number of
    distinct demand levels (tens, for one GPU class). ``start`` (e.g. the all-on-demand
    solution) is handed to the solver as a first incumbent, so a time-limited solve returns a
    plan no worse than it.

    Large programs (at least :data:`STAGED_MIN_HOURLY_VARS` hourly integer variables, with
    reservations to choose) are solved in stages, see :func:`_solve_staged`; the model is the
    same, only the route to its optimum differs.
    """
    started = time.perf_counter()
    hours = len(next(iter(demand.values())))
    model = _build(
        demand,
        candidates,
        spot_max_share=spot_max_share,
        quotas=quotas,
        budget_usd=budget_usd,
        fixed_reserved=fixed_reserved,
        allow_unmet=allow_unmet,
        elastic=elastic,
    )
    build_seconds = time.perf_counter() - started
    free_reserved = [v for v in model.reserved_vars.values() if not isinstance(v, int)]
    solution = Solution("infeasible", {}, [{} for _ in range(hours)], [{} for _ in range(hours)],
                        {}, 0, build_seconds=build_seconds)  # fmt: skip
    if start is not None:
        _set_start(model, start)
    budget_s = time_limit_s - build_seconds
    if free_reserved and len(model.hourly_vars) >= STAGED_MIN_HOURLY_VARS:
        _solve_staged(model, solution, solver, budget_s, gap, threads, start is not None)
    else:
        _run(model, solution, "milp", solver, budget_s, gap, threads, warm=start is not None)
    needed = _read(model, solution, hours) if solution.status != "infeasible" else {}
    solution.seconds = time.perf_counter() - started
    return solution, needed


def _run(
    model: _Model,
    solution: Solution,
    stage: str,
    solver: str,
    time_limit_s: float,
    gap: float,
    threads: int,
    *,
    warm: bool = False,
    mip: bool = True,
    options: Sequence[str] = (),
) -> int:
    """One solver call; sets ``solution.status`` and ``objective``; returns PuLP's status."""
    import pulp

    prob = model.prob
    t = time.perf_counter()
    prob.solve(
        make_solver(
            solver, time_limit_s, gap, warm_start=warm, threads=threads, mip=mip, options=options
        )
    )
    solution.solver_seconds += time.perf_counter() - t
    solution.stages.append(f"{stage} {time.perf_counter() - t:.2f}s")
    solution.status = {1: "optimal", 2: "feasible"}.get(prob.sol_status, "infeasible")
    solution.proven_infeasible = prob.status == pulp.LpStatusInfeasible
    solution.objective = pulp.value(prob.objective) if solution.status != "infeasible" else None
    return prob.status


def _set_start(model: _Model, start: Solution) -> None:
    for key, var in model.reserved_vars.items():
        if not isinstance(var, int):
            var.setInitialValue(start.reserved.get(key, 0), check=False)
    for at, c, var in model.hourly_vars:
        mix = start.spot if c.offer.option is PurchaseOption.SPOT else start.ondemand
        var.setInitialValue(mix[at[0]].get(c.offer.key, 0), check=False)
    for v in model.prob.variables():
        if v.varValue is None:
            v.setInitialValue(0)


def _solve_staged(
    model: _Model,
    solution: Solution,
    solver: str,
    time_limit_s: float,
    gap: float,
    threads: int,
    have_start: bool,
) -> None:
    """LP bound, then a rounded incumbent, then the full MILP only if the gap is not met.

    1. **LP relaxation** of the whole program: its optimum is a lower bound on every plan
       (integer or not). If the LP is infeasible, so is the program (proven).
    2. **Rounding in Python** (:func:`_round_hours`): the LP's reservations rounded to the
       nearest integer; with them fixed the hours are independent, and each demand level's
       counts are rounded and completed greedily. The result is checked against every row
       (:func:`_feasible`) and kept if cheaper than ``start``. (Solving the fixed-reservation
       program with CBC instead took 6–8 s on the 720 h GPU case and found no integer plan
       at all in 40 s on the vCPU + memory case.)
    3. If ``incumbent − bound <= gap × incumbent`` (the relative gap CBC's ``ratioGap``
       uses) the incumbent is the answer, with status ``optimal`` exactly as a solver
       stopping at that gap reports it. Otherwise the full MILP runs, warm started from the
       best incumbent, for the time left, with :data:`_BOUND_ONLY_CBC`; it can only improve
       on its start, and if it returns nothing better the start is kept (``feasible``).

    Whatever fails (time limit in a stage, rounded reservations breaking a budget or quota)
    falls through to the full MILP, so the result is never worse than a direct solve with
    the same start.
    """
    import pulp

    deadline = time.perf_counter() + time_limit_s
    prob = model.prob
    start_values = {v.name: v.varValue for v in prob.variables()} if have_start else None
    best: dict[str, float] | None = None
    best_objective = math.inf
    if start_values is not None and _feasible(prob, start_values):
        best, best_objective = start_values, _objective_at(prob, start_values)

    status = _run(model, solution, "lp", solver, time_limit_s, 0.0, threads, mip=False)
    if status == pulp.LpStatusInfeasible:
        solution.status, solution.proven_infeasible = "infeasible", True
        return
    bound = solution.objective if status == pulp.LpStatusOptimal else None
    solution.bound = bound
    free = {k: v for k, v in model.reserved_vars.items() if not isinstance(v, int)}
    if bound is not None:
        t = time.perf_counter()
        for v in free.values():
            v.varValue = max(0, round(v.varValue or 0))
        rounded = _round_hours(model)
        values = {v.name: v.varValue for v in prob.variables()}
        solution.stages.append(f"round {time.perf_counter() - t:.2f}s")
        if rounded and _feasible(prob, values):
            found = _objective_at(prob, values)
            if found < best_objective:
                best, best_objective = values, found
    if bound is not None and best is not None and best_objective - bound <= gap * best_objective:
        _restore(prob, best)
        solution.status, solution.objective, solution.proven_infeasible = (
            "optimal",
            best_objective,
            False,
        )
        return
    if best is not None:
        _restore(prob, best)
    left = deadline - time.perf_counter()
    warm = best is not None
    options = _BOUND_ONLY_CBC if warm else ()
    _run(model, solution, "milp", solver, left, gap, threads, warm=warm, options=options)
    if best is not None and (solution.status == "infeasible" or solution.objective is None
                             or solution.objective > best_objective + 1e-6):  # fmt: skip
        # The solver stopped without returning its start: the incumbent is still a plan.
        _restore(prob, best)
        solution.status, solution.objective, solution.proven_infeasible = (
            "feasible",
            best_objective,
            False,
        )
    solution.bound = bound


def _round_hours(model: _Model) -> bool:
    """Integer hourly counts around the LP's, for the (rounded) reservations in the variables.

    Per demand level: every hourly count is rounded down from its LP value (or started at
    zero; the cheaper of the two results is kept), then the uncovered rest is bought
    greedily — each step takes the offer and count with the lowest cost per share of the
    rest covered in its least-covered class, within the variable's bound, the spot cap and
    the quotas — and finally instances that are no longer needed are dropped, dearest
    first. Returns False if some level could not be covered (the
    caller then keeps its other incumbent). A heuristic: the solver's bound decides whether
    the result is good enough.
    """
    for level in model.levels:
        tries = [_round_level(level, model.limits, model.spot_max_share, lp) for lp in (1, 0)]
        found = [t for t in tries if t is not None]
        if not found:
            return False
        prices = [c.hourly_cost for c, _ in level.hourly]
        counts = min(found, key=lambda n: float(np.dot(prices, n)))
        for (_, var), n in zip(level.hourly, counts, strict=True):
            var.varValue = n
    for _, _, var in model.unmet_vars:
        var.varValue = 0
    for vs in model.slack.values():
        for var in vs:
            var.varValue = 0
    return True


def _round_level(
    level: _Level, limits: Mapping[str, float], share: float, from_lp: bool
) -> list[int] | None:
    need = level.need
    cap = {k: share * d for k, d in need.items()}
    supply = dict.fromkeys(need, 0.0)
    spot = dict.fromkeys(need, 0.0)
    quota: dict[str, float] = defaultdict(float)
    for c, var in level.reserved:
        n = var if isinstance(var, int) else (var.varValue or 0.0)
        for k, u in c.units:
            if k in supply:
                supply[k] += u * n
        for scope, u in c.scopes:
            quota[scope] += u * n
    counts: list[int] = []

    def take(i: int, n: int) -> None:
        c = level.hourly[i][0]
        counts[i] += n
        for k, u in c.units:
            if k in supply:
                supply[k] += u * n
                if c.offer.option is PurchaseOption.SPOT:
                    spot[k] += c.weight * u * n
        for scope, u in c.scopes:
            quota[scope] += u * n

    for i, (_, var) in enumerate(level.hourly):
        counts.append(0)
        if from_lp:
            take(i, math.floor((var.varValue or 0.0) + 1e-6))
    while True:
        rest = {k: need[k] - supply[k] for k in need if need[k] - supply[k] > 1e-9}
        if not rest:
            break
        best: tuple[float, int, int] | None = None
        for i, (c, var) in enumerate(level.hourly):
            served = [(k, u) for k, u in c.units if k in rest]
            if not served:
                continue
            room = (var.upBound or 0) - counts[i]
            if c.offer.option is PurchaseOption.SPOT:
                for k, u in c.units:
                    if k in cap:
                        room = min(room, math.floor((cap[k] - spot[k]) / (c.weight * u) + 1e-9))
            for scope, u in c.scopes:
                room = min(room, math.floor((limits[scope] - quota[scope]) / u + 1e-9))
            if room <= 0:
                continue
            n = min(room, max(math.ceil(rest[k] / u - 1e-9) for k, u in served))
            # Cost per share of the rest covered in its least-covered class: the cost of
            # finishing the cover, which does not reward over-buying a class that is cheap.
            covered = min(min(u * n, rest[k]) / rest[k] for k, u in served)
            score = c.hourly_cost * n / covered
            if best is None or score < best[0]:
                best = (score, i, n)
        if best is None:
            return None
        take(best[1], best[2])
    for i in sorted(range(len(counts)), key=lambda i: -level.hourly[i][0].hourly_cost):
        c = level.hourly[i][0]
        while counts[i] > 0 and all(
            supply[k] - u >= need[k] - 1e-9 for k, u in c.units if k in supply
        ):
            take(i, -1)
    return counts


def _objective_at(prob: Any, values: Mapping[str, float | None]) -> float:
    objective = prob.objective
    return objective.constant + sum(a * (values.get(v.name) or 0.0) for v, a in objective.items())


def _feasible(prob: Any, values: Mapping[str, float | None], tol: float = 1e-6) -> bool:
    """Whether ``values`` (e.g. the all-on-demand start) satisfy every row and bound."""
    for v in prob.variables():
        x = values.get(v.name) or 0.0
        if (v.lowBound is not None and x < v.lowBound - tol) or (
            v.upBound is not None and x > v.upBound + tol
        ):
            return False
    for row in prob.constraints.values():
        lhs = row.constant + sum(a * (values.get(v.name) or 0.0) for v, a in row.items())
        if (row.sense >= 0 and lhs < -tol) or (row.sense <= 0 and lhs > tol):
            return False
    return True


def _restore(prob: Any, values: Mapping[str, float | None]) -> None:
    for v in prob.variables():
        v.varValue = values.get(v.name)


def _read(model: _Model, solution: Solution, hours: int) -> dict[str, float]:
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
    "Solution",
    "make_solver",
    "solution_costs",
    "solve_program",
    "whole_units",
]
