"""The staged solve of a large capacity program: LP bound, rounded incumbent, then the MILP.

At 10^5 integer columns a direct MILP solve spends most of its time finding a first good
plan; the LP relaxation and a rounding in Python find one in seconds, and often prove it
within the gap. See :func:`solve_staged` for the stages and why each is safe.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from prefect_cloudsched.core.catalog import PurchaseOption
from prefect_cloudsched.core.planning.solver import Level, Model, Solution, run_stage

#: CBC options for the last stage of a staged solve, which starts from a good incumbent and
#: mostly has to prove the bound: one round of root cuts (the rounds after the first add
#: little bound on these programs and cost tens of seconds at 10^5 columns), without probing
#: and two-step MIR, the two slowest generators here. Branching then continues as usual if
#: the gap is not closed at the root.
_BOUND_ONLY_CBC = ("passCuts 1", "probing off", "twoMirCuts off")


def solve_staged(
    model: Model,
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

    status = run_stage(model, solution, "lp", solver, time_limit_s, 0.0, threads, mip=False)
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
    run_stage(model, solution, "milp", solver, left, gap, threads, warm=warm, options=options)
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


def _round_hours(model: Model) -> bool:
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
    level: Level, limits: Mapping[str, float], share: float, from_lp: bool
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


__all__ = ["solve_staged"]
