"""Capacity plan: how much reserved capacity to hold and the hourly on-demand/spot mix.

The static half of the scheduler. Given hourly demand per resource class (GPUs of a model,
vCPUs, memory) over a horizon of ``H`` hours, a mixed-integer program chooses

* ``r[o]`` — reserved/committed instances of offer ``o``, constant over the horizon and paid
  every hour at the amortised 1-yr rate (``Offer.usd_per_hour`` of a RESERVED offer);
* ``x[o,h]`` — on-demand instances of ``o`` in hour ``h``;
* ``y[o,h]`` — spot instances of ``o`` in hour ``h``, priced at their *expected* hourly cost
  (``spot_expected_cost`` over one hour: an interrupted hour re-runs on on-demand);

to minimise expected cost (plus an optional carbon price) subject to:

* **cover** — for every class ``k`` and hour ``h``: units supplied ≥ demand at the chosen
  service level (a forecast quantile, see :func:`demand_from_forecast`);
* **spot cap** — spot units, each weighted by its interruption band (``risk_weight``: 1 for
  the <5 % and 5–10 % bands, up to 3.3 for >20 %), ≤ ``spot_max_share`` × demand, per hour;
* **quota** — per ``cloud/region`` (vCPUs), ``cloud/region/family`` (vCPUs) or
  ``cloud/region/gpu:MODEL`` (GPUs), per hour, over all purchase options;
* **budget** — total expected cost over the horizon ≤ ``budget_usd``.

The module follows SkyPilot's optimizer layout: candidates (vectorised filters, exact
dominance pruning, then the cheapest few per cloud and region), then the model, then the
solve, then the explanation. An infeasible model is solved again with slack on each
constraint family; the families that need slack are named in :attr:`CapacityPlan.binding`.
GPU demand is met by instances of that GPU model; vCPU and memory demand by CPU-only
instances (as ``decide()`` never spends a GPU instance on CPU work).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.planning.candidates import (
    GPU_PREFIX,
    MEMORY,
    NO_SPOT,
    ON_DEMAND_ONLY,
    VCPU,
    Candidate,
    Quota,
    parse_quotas,
    select_candidates,
)
from prefect_cloudsched.core.planning.program import (
    SOLVERS,
    ProgramRules,
    Solution,
    SolverOptions,
    solution_costs,
    solve_program,
)
from prefect_cloudsched.errors import InputError


@dataclass(frozen=True, slots=True)
class ReservedItem:
    """Reserved/committed instances of one shape and place that the plan holds.

    Attributes:
        offer_key: The RESERVED offer (``cloud/location/type/reserved``).
        capacity_key: Shape and place, what the task runner's ``reserved=`` counts.
        count: Instances to hold.
        usd_per_hour: Amortised 1-yr price of one instance.
        gpu_type: GPU model of the instance, spelled out for readers of the plan JSON.
        gpu_count: GPUs per instance.
    """

    offer_key: str
    capacity_key: str
    count: int
    usd_per_hour: float
    gpu_type: str | None = None
    gpu_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form read by the runner (``capacity_key``, ``count``) and ``plan apply``."""
        return {
            "capacity_key": self.capacity_key,
            "offer_key": self.offer_key,
            "count": self.count,
            "usd_per_hour": round(self.usd_per_hour, 6),
            "gpu_type": self.gpu_type,
            "gpu_count": self.gpu_count,
        }


@dataclass
class CapacityPlan:
    """The planner's answer and how it was reached.

    Attributes:
        status: ``optimal``, ``feasible`` (stopped at the time limit) or ``infeasible``.
        reserved: Reservations to hold over the horizon.
        ondemand: Per hour, on-demand instance counts by offer key.
        spot: Per hour, spot instance counts by offer key.
        expected_cost: Expected USD over the horizon (reserved + on-demand + spot).
        ondemand_cost: USD of covering the same demand with on-demand instances only.
        solve_seconds: Wall time of candidates, model and solve.
        binding: For an infeasible plan, which constraints bind, in words.
        demand: The demand covered, per class and hour (at the service level).
        service_level: Forecast quantile the demand was taken at.
        reserved_cost: Part of ``expected_cost`` paid for reservations.
        spot_cost: Part of ``expected_cost`` paid for spot (with interruption overhead).
        carbon_tonnes: Estimated tCO2e, when a carbon price was given.
        candidates: Offers that entered the model.
        solver: ``cbc`` or ``highs``.
        supplied: Per class and purchase option, the units held in each hour (what the
            ``--plot`` stack draws).
        build_seconds: Part of ``solve_seconds`` spent building the plan's PuLP model.
        solver_seconds: Part spent in solver calls for the plan (model files included).
        lp_gap: For a plan solved in stages, its relative distance from the LP-relaxation
            bound (an upper bound on its distance from the optimum); None otherwise.
        stages: Solver calls made for the plan, with their wall time.
    """

    status: str
    reserved: list[ReservedItem]
    ondemand: list[dict[str, int]]
    spot: list[dict[str, int]]
    expected_cost: float
    ondemand_cost: float
    solve_seconds: float
    binding: list[str] = field(default_factory=list)
    demand: dict[str, list[float]] = field(default_factory=dict)
    service_level: float | None = None
    reserved_cost: float = 0.0
    spot_cost: float = 0.0
    carbon_tonnes: float | None = None
    candidates: int = 0
    solver: str = "cbc"
    supplied: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    build_seconds: float = 0.0
    solver_seconds: float = 0.0
    lp_gap: float | None = None
    stages: list[str] = field(default_factory=list)

    @property
    def hours(self) -> int:
        """Length of the horizon."""
        return len(self.ondemand)

    @property
    def saving(self) -> float:
        """USD saved against all on-demand (0 for an infeasible plan)."""
        if self.status == "infeasible":
            return 0.0
        return self.ondemand_cost - self.expected_cost

    @property
    def ondemand_part_cost(self) -> float:
        """Part of ``expected_cost`` paid for on-demand (``ondemand_cost`` is the all-on-demand
        baseline): ``reserved_cost + spot_cost + ondemand_part_cost == expected_cost``."""
        return self.expected_cost - self.reserved_cost - self.spot_cost

    def totals(self, unit: Callable[[float], int]) -> tuple[int, int, int]:
        """Expected, all-on-demand and saving in whole ``unit``s (``to_micro`` for JSON and
        the ledger, ``to_cents`` as printed): the saving is the difference of the two rounded
        figures, never a third rounding."""
        expected, ondemand = unit(self.expected_cost), unit(self.ondemand_cost)
        return expected, ondemand, 0 if self.status == "infeasible" else ondemand - expected

    def reserved_capacity(self) -> dict[str, int]:
        """``{capacity_key: count}``: the task runner's ``reserved=`` argument."""
        counts: dict[str, int] = defaultdict(int)
        for item in self.reserved:
            counts[item.capacity_key] += item.count
        return dict(counts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: what ``plan --json`` prints and the ledger stores."""
        usd = ("expected_cost", "ondemand_cost", "saving", "reserved_cost", "spot_cost",
               "ondemand_part_cost")  # fmt: skip
        return {
            "status": self.status,
            **{name: round(getattr(self, name), 6) for name in usd},  # to the micro-dollar
            "carbon_tonnes": None if self.carbon_tonnes is None else round(self.carbon_tonnes, 6),
            "reserved": [item.to_dict() for item in self.reserved],
            "hours": self.hours,
            "service_level": self.service_level,
            "solve_seconds": round(self.solve_seconds, 3),
            "solver": self.solver,
            "candidates": self.candidates,
            "supplied": {
                k: {option: [round(v, 4) for v in vs] for option, vs in by_option.items()}
                for k, by_option in self.supplied.items()
            },
            "binding": list(self.binding),
            "demand": {k: [round(v, 4) for v in vs] for k, vs in self.demand.items()},
            "ondemand": self.ondemand,
            "spot": self.spot,
        }


#: Columns of the forecaster's ``Forecast.frame`` and the quantile each one is.
FORECAST_QUANTILES: dict[str, float] = {
    "lo95": 0.025,
    "lo80": 0.1,
    "point": 0.5,
    "hi80": 0.9,
    "hi95": 0.975,
}


def demand_from_forecast(forecast: Any, service_level: float) -> list[float]:
    """Hourly demand at a forecast quantile.

    ``forecast`` is the forecaster's ``Forecast`` (its ``frame`` has the columns
    ``point, lo80, hi80, lo95, hi95``), such a frame itself, or a table of shape
    ``(H, quantiles)``: a ``pandas.DataFrame`` whose column names are quantile levels in
    (0, 1). Known quantiles are used exactly (0.5 → point, 0.9 → upper 80 % bound,
    0.975 → upper 95 % bound); levels in between are interpolated linearly in normal-score
    space, and beyond the outermost ones extrapolated along the last segment. Negative
    values are clipped to 0.

    Raises:
        InputError: ``service_level`` outside (0, 1) or a table without quantile columns.
    """
    if not 0 < service_level < 1:
        raise InputError(f"service_level must be in (0, 1), got {service_level!r}")
    levels, table = _quantile_table(getattr(forecast, "frame", forecast))
    z = np.array([NormalDist().inv_cdf(q) for q in levels])
    target = NormalDist().inv_cdf(service_level)
    hi = int(np.clip(np.searchsorted(z, target), 1, len(z) - 1))
    lo = hi - 1
    weight = (target - z[lo]) / (z[hi] - z[lo])
    values = table[:, lo] + weight * (table[:, hi] - table[:, lo])
    return [float(v) for v in np.clip(values, 0.0, None)]


def _quantile_table(frame: Any) -> tuple[list[float], np.ndarray]:
    columns = list(getattr(frame, "columns", []))
    levels: list[float] = []
    for column in columns:
        level = FORECAST_QUANTILES.get(str(column))
        if level is None:
            try:
                level = float(column)
            except (TypeError, ValueError):
                level = math.nan
        levels.append(level)
    usable = [i for i, q in enumerate(levels) if 0 < q < 1]
    if len(usable) < 2:
        raise InputError(
            "a forecast needs at least two quantiles: a Forecast, or a table with columns "
            "point/lo80/hi80/lo95/hi95 or quantile levels in (0, 1)"
        )
    usable.sort(key=lambda i: levels[i])
    table = np.asarray(frame, dtype=float)[:, usable]
    return [levels[i] for i in usable], table


def validate_demand(
    demand: Mapping[str, Any], catalog: Catalog, service_level: float
) -> dict[str, np.ndarray]:
    if not demand:
        raise InputError("demand is empty; give at least one resource class, e.g. 'gpu:A100'")
    known = {g.lower(): g for g in catalog.gpu_types}
    series: dict[str, np.ndarray] = {}
    for key, values in demand.items():
        if key.startswith(GPU_PREFIX):
            gpu = known.get(key[len(GPU_PREFIX) :].strip().lower())
            if gpu is None:
                raise InputError(
                    f"demand class {key!r}: unknown GPU type; known: {', '.join(catalog.gpu_types)}"
                )
            name = GPU_PREFIX + gpu
        elif key in (VCPU, MEMORY):
            name = key
        else:
            raise InputError(
                f"demand class {key!r} is unknown; use 'gpu:<MODEL>', '{VCPU}' or '{MEMORY}'"
            )
        if hasattr(values, "frame") or hasattr(values, "columns"):
            values = demand_from_forecast(values, service_level)
        try:
            array = np.asarray(values, dtype=float)
        except (TypeError, ValueError) as err:
            raise InputError(f"demand {key!r} must be numbers") from err
        if array.ndim != 1 or array.size == 0:
            raise InputError(f"demand {key!r} must be a non-empty hourly series")
        if not np.isfinite(array).all() or (array < 0).any():
            raise InputError(f"demand {key!r} must be finite and >= 0 in every hour")
        series[name] = series[name] + array if name in series else array
    lengths = {len(a) for a in series.values()}
    if len(lengths) != 1:
        raise InputError(f"every demand series must have the same length; got {sorted(lengths)}")
    return series


def _explain_infeasible(
    needed: Mapping[str, float],
    quotas: Sequence[Quota],
    budget_usd: float | None,
    spot_max_share: float,
    service_level: float | None,
) -> list[str]:
    reasons: list[str] = []
    for q in quotas:
        short = needed.get("quota:" + q.key, 0.0)
        if short > 1e-6:
            reasons.append(
                f"{q.describe()} is {short:g} short in the busiest hour; raise the quota or "
                "allow more regions"
            )
    if needed.get("spot", 0.0) > 1e-6:
        reasons.append(
            f"spot cap {spot_max_share:g}: not enough on-demand/reserved offers to cover the "
            "rest; raise spot_max_share or allow more clouds/regions"
        )
    if budget_usd is not None and needed.get("budget", 0.0) > 1e-6:
        level = f" at service level {service_level:g}" if service_level is not None else ""
        reasons.append(
            f"budget ${budget_usd:,.2f} is ${needed['budget']:,.2f} short of the cheapest plan "
            f"that covers the demand{level}; raise the budget or lower the service level"
        )
    return reasons


def plan_capacity(
    demand: Mapping[str, Any],
    catalog: Catalog,
    *,
    service_level: float = 0.9,
    spot_max_share: float = 0.5,
    budget_usd: float | None = None,
    carbon_usd_per_tonne: float | None = None,
    carbon_intensity: Mapping[str, float] | None = None,
    power_kw: Callable[[Offer], float] | None = None,
    quotas: Mapping[str, float] | None = None,
    clouds: Sequence[str] | None = None,
    regions: Sequence[str] | None = None,
    max_candidates: int = 3,
    solver: str = "cbc",
    time_limit_s: float = 60,
    gap: float = 0.01,
    progress: Callable[[str], None] | None = None,
    threads: int = 2,
) -> CapacityPlan:
    """Plan reserved capacity and the hourly on-demand/spot mix for a demand forecast.

    Args:
        demand: Per resource class (``"gpu:A100"``, ``"vcpu"``, ``"memory_gib"``) an hourly
            series already at the service level, or a forecast that
            :func:`demand_from_forecast` turns into one at ``service_level``.
        catalog: Offers to plan over.
        service_level: Forecast quantile to cover (0.5 point, 0.9 upper 80 %, 0.975 upper
            95 %); used for forecast inputs and recorded in the plan.
        spot_max_share: Risk budget: spot units (weighted by band) per hour ≤ this share of
            demand. 0 disables spot.
        budget_usd: Highest total expected cost over the horizon.
        carbon_usd_per_tonne: Price added per tCO2e to every instance-hour's cost (the plan's
            ``expected_cost`` stays in USD; ``carbon_tonnes`` reports the emissions).
        carbon_intensity: Grid intensity per region, gCO2e/kWh (default: the shipped
            tables of :mod:`prefect_cloudsched.core.energy`).
        power_kw: Power drawn by one instance of an offer, kW with PUE (default: the Cloud
            Carbon Footprint estimate of :mod:`prefect_cloudsched.core.energy`).
        quotas: Concurrent limits, ``{"aws/us-east-1": 256}`` (vCPUs),
            ``{"aws/us-east-1/p4d": 96}`` (vCPUs of a family),
            ``{"gcp/us-central1/gpu:A100": 16}`` (GPUs).
        clouds: Only these clouds.
        regions: Only these regions (or zones).
        max_candidates: Offers kept per class, cloud, region and purchase option.
        solver: ``cbc`` (bundled with PuLP) or ``highs`` (needs ``highspy``).
        time_limit_s: Solver time limit; the best plan found so far is returned as
            ``feasible``.
        gap: Relative optimality gap at which the solver stops.
        progress: Called with one line per stage (the CLI prints them on stderr).
        threads: Solver threads (default 2, the shared 2-core machine the benchmark runs on).

    Returns:
        The plan; ``status == "infeasible"`` plans name the binding constraints.

    Raises:
        InputError: a demand class, quota, option or value is invalid.

    Example:
        >>> plan = plan_capacity({"gpu:A100": [2.0] * 168}, load_catalog())  # doctest: +SKIP
        >>> plan.reserved_capacity()  # doctest: +SKIP
        {'gcp/us-central1-a/a2-highgpu-2g': 1}
    """
    started = time.perf_counter()
    say = progress or (lambda _line: None)
    series = validate_demand(demand, catalog, service_level)
    check_options(spot_max_share, budget_usd, max_candidates, time_limit_s, gap, solver)
    parsed_quotas = parse_quotas(quotas, catalog)
    hours = len(next(iter(series.values())))
    options = frozenset(PurchaseOption) if spot_max_share > 0 else NO_SPOT
    select = dict(
        clouds=clouds,
        regions=regions,
        max_candidates=max_candidates,
        carbon_usd_per_tonne=carbon_usd_per_tonne,
        carbon_intensity=carbon_intensity,
        power_kw=power_kw,
    )
    candidates = select_candidates(
        list(series), catalog, options=options, quotas=parsed_quotas, **select
    )
    say(f"{len(candidates)} candidate offers for {', '.join(series)} over {hours} h")
    demand_out = {k: [float(v) for v in a] for k, a in series.items()}
    empty = _empty_plan(hours, demand_out, service_level, solver)
    served = {k for c in candidates for k, _ in c.units}
    uncovered = [k for k, a in series.items() if a.max() > 0 and k not in served]
    if uncovered:
        empty.binding = [
            f"demand {k}: no offer in the allowed clouds/regions can serve it; widen them"
            for k in uncovered
        ]
        empty.solve_seconds = time.perf_counter() - started
        return empty

    od_only = select_candidates(list(series), catalog, options=ON_DEMAND_ONLY, quotas=(), **select)
    run = SolverOptions(solver, time_limit_s, gap, threads)
    say(f"solving the all-on-demand baseline with {solver.upper()}")
    baseline, _ = solve_program(series, od_only, ProgramRules(spot_max_share=0), run)
    ondemand_cost = sum(solution_costs(baseline, od_only, hours)[:3])
    say(f"solving the plan with {solver.upper()} (limit {time_limit_s:g} s, gap {gap:g})")
    rules = ProgramRules(spot_max_share, parsed_quotas, budget_usd)
    start = baseline if baseline.status != "infeasible" else None
    solution, _ = solve_program(series, candidates, rules, run, start=start)
    if solution.status == "infeasible":
        empty.ondemand_cost = ondemand_cost
        empty.candidates = len(candidates)
        empty.binding = _why_no_plan(solution, series, candidates, rules, run, service_level, say)
        empty.solve_seconds = time.perf_counter() - started
        return empty

    return _finished_plan(
        solution,
        candidates,
        series,
        ondemand_cost=ondemand_cost,
        service_level=service_level,
        carbon_priced=bool(carbon_usd_per_tonne),
        solver=solver,
        started=started,
    )


def _finished_plan(
    solution: Solution,
    candidates: Sequence[Candidate],
    series: Mapping[str, np.ndarray],
    *,
    ondemand_cost: float,
    service_level: float,
    carbon_priced: bool,
    solver: str,
    started: float,
) -> CapacityPlan:
    """The plan a solved program describes, with its costs split by purchase option."""
    hours = len(next(iter(series.values())))
    reserved_cost, od_cost, spot_cost, tonnes = solution_costs(solution, candidates, hours)
    return CapacityPlan(
        status=solution.status,
        reserved=_reserved_items(solution, candidates),
        ondemand=solution.ondemand,
        spot=solution.spot,
        expected_cost=reserved_cost + od_cost + spot_cost,
        ondemand_cost=ondemand_cost,
        solve_seconds=time.perf_counter() - started,
        demand={k: [float(v) for v in a] for k, a in series.items()},
        service_level=service_level,
        reserved_cost=reserved_cost,
        spot_cost=spot_cost,
        carbon_tonnes=tonnes if carbon_priced else None,
        candidates=len(candidates),
        solver=solver,
        supplied=_supplied(solution, candidates, list(series), hours),
        build_seconds=solution.build_seconds,
        solver_seconds=solution.solver_seconds,
        lp_gap=solution.lp_gap,
        stages=solution.stages,
    )


def _why_no_plan(
    solution: Solution,
    series: Mapping[str, np.ndarray],
    candidates: Sequence[Candidate],
    rules: ProgramRules,
    run: SolverOptions,
    service_level: float | None,
    say: Callable[[str], None],
) -> list[str]:
    """Why no plan came back: the time limit, or (re-solved with slack) the binding rows."""
    if not solution.proven_infeasible:
        return [
            f"no plan found within the {run.time_limit_s:g} s time limit; raise the time limit, "
            "lower max_candidates or try the other solver"
        ]
    say("infeasible: re-solving with slack to find the binding constraints")
    relaxed, needed = solve_program(series, candidates, replace(rules, elastic=True), run)
    return _explain_infeasible(
        needed, rules.quotas, rules.budget_usd, rules.spot_max_share, service_level
    ) or [
        f"no solution found within the {run.time_limit_s:g} s time limit"
        if relaxed.status != "infeasible"
        else "the relaxed model is infeasible too; check the demand and offers"
    ]


def _reserved_items(solution: Solution, candidates: Sequence[Candidate]) -> list[ReservedItem]:
    by_key = {c.offer.key: c.offer for c in candidates}
    return [
        ReservedItem(
            key,
            by_key[key].capacity_key,
            count,
            by_key[key].usd_per_hour,
            by_key[key].gpu_type,
            by_key[key].gpu_count,
        )
        for key, count in sorted(solution.reserved.items())
    ]


def _supplied(
    solution: Solution, candidates: Sequence[Candidate], classes: Sequence[str], hours: int
) -> dict[str, dict[str, list[float]]]:
    units = {c.offer.key: dict(c.units) for c in candidates}
    out = {k: {option.value: [0.0] * hours for option in PurchaseOption} for k in classes}
    for key, count in solution.reserved.items():
        for k, u in units[key].items():
            out[k][PurchaseOption.RESERVED.value] = [u * count + v for v in out[k]["reserved"]]
    for option, mixes in (
        (PurchaseOption.ON_DEMAND, solution.ondemand),
        (PurchaseOption.SPOT, solution.spot),
    ):
        for h, mix in enumerate(mixes):
            for key, count in mix.items():
                for k, u in units[key].items():
                    out[k][option.value][h] += u * count
    return out


def check_options(
    spot_max_share: float,
    budget_usd: float | None,
    max_candidates: int,
    time_limit_s: float,
    gap: float,
    solver: str,
) -> None:
    if not 0 <= spot_max_share <= 1:
        raise InputError(f"spot_max_share must be in [0, 1], got {spot_max_share!r}")
    if budget_usd is not None and budget_usd < 0:
        raise InputError(f"budget must be >= 0 USD, got {budget_usd!r}")
    if max_candidates < 1:
        raise InputError(f"max_candidates must be >= 1, got {max_candidates!r}")
    if time_limit_s <= 0:
        raise InputError(f"time limit must be > 0 s, got {time_limit_s!r}")
    if not 0 <= gap < 1:
        raise InputError(f"gap must be in [0, 1), got {gap!r}")
    if solver not in SOLVERS:
        raise InputError(f"solver {solver!r} is unknown; use one of: {', '.join(SOLVERS)}")


def _empty_plan(
    hours: int, demand: dict[str, list[float]], service_level: float, solver: str
) -> CapacityPlan:
    return CapacityPlan(
        status="infeasible",
        reserved=[],
        ondemand=[{} for _ in range(hours)],
        spot=[{} for _ in range(hours)],
        expected_cost=0.0,
        ondemand_cost=0.0,
        solve_seconds=0.0,
        demand=demand,
        service_level=service_level,
        solver=solver,
    )


__all__ = [
    "CapacityPlan",
    "ReservedItem",
    "check_options",
    "demand_from_forecast",
    "plan_capacity",
    "validate_demand",
]
