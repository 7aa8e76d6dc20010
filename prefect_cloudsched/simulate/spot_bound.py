"""The omniscient lower bound for one spot job: a small ILP solved by PuLP (HiGHS, else CBC).

Formulation (Wu et al., NSDI'24, §A, extended to several zones): per tick ``t`` binaries
``s_z(t)`` (spot in zone ``z``), ``v(t)`` (on-demand) and change-over starts ``x_z(t)``,
``y(t)``. Minimise ``Σ g·(spot_z·s_z + od·v)`` subject to ``Σ_z s_z + v ≤ 1``,
``s_z(t) ≤ up_z(t)``, ``x_z(t) ≥ s_z(t) − s_z(t−1)`` (and the same for ``y``/``v``; the job
starts idle, so the first start pays a change-over too), and
``g·Σ(s + v) − spare ≥ C + d·Σ(x + y)``: the replay bills the tick in which the work
completes only until then, so up to one tick of seconds (``spare ≤ g``, in a state the
schedule uses, at that state's price) is neither billed nor counted. Moving the checkpoint
between regions is free here, so the value stays a lower bound with several regions. A
segment shorter than ``d`` counts negative progress in this sum while the replay counts zero,
but such a segment only ever adds cost, so the optimum never has one and the bound holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulp

from prefect_cloudsched.simulate.spot_replay import SpotJob, SpotMarket


@dataclass(frozen=True)
class Bound:
    """The bound's value and whether CBC proved it optimal (else: LP relaxation value)."""

    cost_usd: float
    optimal: bool


def omniscient_cost(market: SpotMarket, job: SpotJob, *, time_limit_s: float = 60.0) -> Bound:
    """Least cost of any schedule that finishes ``job`` by its deadline on ``market``.

    When CBC cannot prove the integer optimum within ``time_limit_s`` the LP relaxation's
    value is returned instead (``optimal=False``): still a lower bound, just a looser one.
    """
    g = market.gap_s
    n = int(job.deadline_s / g + 1e-6)
    first = job.start_tick
    zones = [z for z in range(len(market.zones)) if market.up[z, first : first + n].any()]
    problem = pulp.LpProblem("omniscient_spot", pulp.LpMinimize)
    ticks = range(n)
    spot = {
        (z, t): pulp.LpVariable(f"s_{z}_{t}", cat="Binary")
        for z in zones
        for t in ticks
        if market.up[z, first + t]
    }
    starts = {key: pulp.LpVariable(f"x_{key[0]}_{key[1]}", cat="Binary") for key in spot}
    od = [pulp.LpVariable(f"v_{t}", cat="Binary") for t in ticks]
    od_starts = [pulp.LpVariable(f"y_{t}", cat="Binary") for t in ticks]
    problem += pulp.lpSum(
        g / 3600 * market.spot_usd_per_hour[z] * var for (z, _), var in spot.items()
    ) + pulp.lpSum(g / 3600 * market.on_demand_usd_per_hour * v for v in od)
    for t in ticks:
        problem += pulp.lpSum(spot[z, t] for z in zones if (z, t) in spot) + od[t] <= 1
        problem += od_starts[t] >= od[t] - (od[t - 1] if t else 0)
    for (z, t), var in spot.items():
        before = spot.get((z, t - 1))
        problem += starts[z, t] >= var - (before if before is not None else 0)
    # the replay bills the tick in which the work completes only until then: up to one
    # tick's worth of seconds (``spare``) is neither billed nor counted as progress, in a
    # state the schedule uses (anywhere, not only last: a relaxation, so still a bound)
    spare_od = pulp.LpVariable("spare_od", lowBound=0, upBound=g)
    spare = {z: pulp.LpVariable(f"spare_{z}", lowBound=0, upBound=g) for z in zones}
    problem += spare_od + pulp.lpSum(spare.values()) <= g
    problem += spare_od <= g * pulp.lpSum(od)
    for z, var in spare.items():
        problem += var <= g * pulp.lpSum(v for (zone, _), v in spot.items() if zone == z)
    problem.setObjective(
        problem.objective
        - spare_od / 3600 * market.on_demand_usd_per_hour
        - pulp.lpSum(var / 3600 * market.spot_usd_per_hour[z] for z, var in spare.items())
    )
    used = pulp.lpSum(spot.values()) + pulp.lpSum(od)
    problem += g * used - spare_od - pulp.lpSum(spare.values()) >= job.work_s + (
        job.change_over_s * (pulp.lpSum(starts.values()) + pulp.lpSum(od_starts))
    )
    status = problem.solve(_solver(time_limit_s))
    if pulp.LpStatus[status] == "Optimal" and problem.sol_status == pulp.LpSolutionOptimal:
        return Bound(float(pulp.value(problem.objective)), True)
    relaxed = problem.deepcopy()
    for var in relaxed.variables():
        var.cat = pulp.LpContinuous
    relaxed.solve(_solver(None))
    return Bound(float(pulp.value(relaxed.objective)), False)


def _solver(time_limit_s: float | None) -> pulp.LpSolver:
    """HiGHS when ``highspy`` is installed (the ``highs`` extra; much faster here), else CBC."""
    if pulp.HiGHS().available():
        return pulp.HiGHS(msg=False, timeLimit=time_limit_s)
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s)


__all__ = ["Bound", "omniscient_cost"]
