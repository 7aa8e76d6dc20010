"""Run several policies on the same jobs and the same spot world, plus the omniscient bound.

The hybrid's reservation comes from the project's own static layer, as in production. For
each instance shape ``decide()`` buys on-demand for work that may not use spot (the work
the hybrid keeps its reservation for), the hourly number of such jobs running in the first
``history_hours`` of the replay is forecast for the next ``history_hours`` with
:func:`prefect_cloudsched.core.forecast.fit_forecast` (median), and
:func:`prefect_cloudsched.core.planning.plan_capacity` sizes that shape's reservation over
history + forecast; :func:`worth_reserving` then cuts it to the instances that pay under
per-second billing. The reservation is held for the whole replay (its first week
included) and charged in full. Replays shorter than ``history_hours`` + 1 day plan no
reservation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption, load_catalog
from prefect_cloudsched.core.energy import EnergyModel
from prefect_cloudsched.core.policy import DEFAULT_POLICY, PlacementState, PolicyConfig
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.simulate.baselines import DISCIPLINES
from prefect_cloudsched.simulate.bound import BoundResult, omniscient_bound
from prefect_cloudsched.simulate.engine import DecisionCache, ElasticSimulator, JobRun
from prefect_cloudsched.simulate.fleet import DEFAULT_HEADROOM, FleetSimulator
from prefect_cloudsched.simulate.gap import gap_breakdown
from prefect_cloudsched.simulate.jobs import Job
from prefect_cloudsched.simulate.metrics import PolicyResult, summarise_elastic, summarise_fleet
from prefect_cloudsched.simulate.spot import SpotModel
from prefect_cloudsched.simulate.spot_policies import ELASTIC_POLICIES

POLICY_NAMES: tuple[str, ...] = (*DISCIPLINES, *ELASTIC_POLICIES)
HISTORY_HOURS = 168
#: One seasonal-AR spec instead of the forecaster's full grid: ~3 s per series here, against
#: about a minute for the grid on the shared 2-core machine.
FORECAST_ORDER = ((1, 0, 0), (0, 1, 1, 24))
#: Shapes planned per replay (busiest first) and the least mean busy instances in the
#: history week for a shape to be planned at all (below it not even one instance pays).
MAX_SHAPES = 8
MIN_MEAN_BUSY = 0.25


@dataclass
class Comparison:
    """Every policy's figures on one replay, the bound and the hybrid's reservation."""

    results: list[PolicyResult]
    bound: BoundResult
    ondemand_cost: float
    reserved: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bound_seconds: float = 0.0
    gaps: dict[str, dict[str, float]] = field(default_factory=dict)


def parse_policies(text: str | Sequence[str] | None) -> list[str]:
    """``"fcfs,hybrid"`` → names, validated; ``None``/``"all"`` → every policy."""
    if text is None or text == "all":
        return list(POLICY_NAMES)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown or not names:
        raise InputError(
            f"--policies: unknown policy {unknown[0] if unknown else '(none)'!r};"
            f" choose from {','.join(POLICY_NAMES)}"
        )
    return list(dict.fromkeys(names))


def hourly_load(
    starts: np.ndarray, ends: np.ndarray, weights: np.ndarray, hours: int
) -> np.ndarray:
    """Exact mean units held per hour (integral over the hour ÷ 3600), vectorised."""
    edges = np.arange(hours + 1) * 3600.0

    def integral(points: np.ndarray) -> np.ndarray:
        order = np.argsort(points)
        p, w = points[order], weights[order]
        cw = np.concatenate(([0.0], np.cumsum(w)))
        cwp = np.concatenate(([0.0], np.cumsum(w * p)))
        k = np.searchsorted(p, edges, side="right")
        return edges * cw[k] - cwp[k]

    return np.diff(integral(starts) - integral(ends)) / 3600.0


def no_spot_busy(
    jobs: Sequence[Job], catalog: Catalog, config: PolicyConfig, hours: int
) -> tuple[dict[str, np.ndarray], dict[str, Offer]]:
    """Hourly mean jobs running per instance shape, for the work that may not use spot.

    The hybrid keeps its reservation for that work (spot-tolerant jobs take it only instead
    of on-demand) and runs one job per instance, so per shape ``decide()`` buys on-demand
    for it, a reserved instance is exactly one job's worth of capacity, and a job is never
    planned onto a larger shape than the one it would buy.
    """
    cache = DecisionCache(catalog, config, PlacementState())
    rows: dict[str, list[tuple[float, float]]] = {}
    offers: dict[str, Offer] = {}
    for i, job in enumerate(jobs):
        if job.needs.allows_spot:
            continue
        offer = cache.decide(JobRun(i, job, cache.class_of(job.needs)), job.submit_s, "od")
        if offer is None:
            continue
        rows.setdefault(offer.capacity_key, []).append(
            (job.submit_s, job.submit_s + job.duration_s)
        )
        offers[offer.capacity_key] = offer
    busy: dict[str, np.ndarray] = {}
    for key, spans in rows.items():
        arr = np.asarray(spans)
        busy[key] = hourly_load(arr[:, 0], arr[:, 1], np.ones(len(arr)), hours)
    return busy, offers


def hindsight_reservation(
    jobs: Sequence[Job], catalog: Catalog, config: PolicyConfig = DEFAULT_POLICY
) -> dict[str, tuple[Offer, int]]:
    """The reservation :func:`worth_reserving` keeps on the *actual* load of the whole
    replay (not a forecast): what perfect foresight of the demand would have bought."""
    end = max(j.submit_s + j.duration_s for j in jobs)
    busy_all, _ = no_spot_busy(jobs, catalog, config, max(int(end // 3600), 1))
    reserved: dict[str, tuple[Offer, int]] = {}
    for key, busy in busy_all.items():
        try:
            res = catalog.find(f"{key}/{PurchaseOption.RESERVED.value}")
        except KeyError:
            continue
        count = worth_reserving(busy, 10**6, res)
        if count:
            reserved[key] = (res, count)
    return reserved


def plan_reservation(
    jobs: Sequence[Job],
    catalog: Catalog,
    config: PolicyConfig = DEFAULT_POLICY,
    *,
    history_hours: int = HISTORY_HOURS,
    time_limit_s: float = 30.0,
    max_shapes: int = MAX_SHAPES,
) -> tuple[dict[str, tuple[Offer, int]], list[str]]:
    """Forecast → capacity plan → reserved instances per capacity key (module docstring)."""
    import pandas as pd

    from prefect_cloudsched.core.forecast import ForecastConfig, fit_forecast
    from prefect_cloudsched.core.planning import demand_from_forecast, plan_capacity

    end = max(j.submit_s + j.duration_s for j in jobs)
    hours = int(end // 3600)
    if hours < history_hours + 24:
        return {}, [f"no reservation: the replay spans {hours} h < {history_hours + 24} h"]
    busy_all, offers = no_spot_busy(jobs, catalog, config, hours)
    # Shapes busy enough in the history week to be worth forecasting, busiest first.
    shapes = sorted(
        (k for k, b in busy_all.items() if b[:history_hours].mean() >= MIN_MEAN_BUSY),
        key=lambda k: -busy_all[k][:history_hours].mean(),
    )[:max_shapes]
    reserved: dict[str, tuple[Offer, int]] = {}
    statuses: list[str] = []
    solve_s = 0.0
    for key in shapes:
        offer = offers[key]
        name = f"gpu:{offer.gpu_type}" if offer.gpu_count else "vcpu"
        units = float(offer.gpu_count or offer.vcpus)
        history = pd.Series(busy_all[key][:history_hours] * units)
        forecast = fit_forecast(
            history,
            horizon=min(history_hours, hours - history_hours),
            config=ForecastConfig(
                orders=(FORECAST_ORDER,), transform="none", weekly_fourier=0, calibrate=False
            ),
        )
        demand = np.asarray([*history.tolist(), *demand_from_forecast(forecast, 0.5)])
        sub = Catalog(
            o
            for o in catalog.offers
            if o.capacity_key == key and o.option is not PurchaseOption.SPOT
        )
        plan = plan_capacity(
            {name: demand.tolist()},
            sub,
            spot_max_share=0.0,
            clouds=sorted(config.allowed_clouds) if config.allowed_clouds else None,
            regions=sorted(config.allowed_regions) if config.allowed_regions else None,
            time_limit_s=time_limit_s,
        )
        statuses.append(plan.status)
        solve_s += plan.solve_seconds
        for item in plan.reserved:
            res = sub.find(item.offer_key)
            count = worth_reserving(demand / units, item.count, res)
            if count > 0:
                reserved[item.capacity_key] = (res, count)
    status = ",".join(sorted(set(statuses))) or "nothing to plan"
    notes = [f"reservation planned ({status}, {solve_s:.1f} s, {len(shapes)} shape(s)): "
             + (", ".join(f"{n}x {k}" for k, (_, n) in reserved.items()) or "none")]  # fmt: skip
    return reserved, notes


def worth_reserving(busy: np.ndarray, planned: int, offer: Offer) -> int:
    """The planned count, cut to the instances that pay under per-second billing.

    The planner counts whole instances per hour; the replay bills on-demand per second, so
    a reservation covering a mean of 0.4 busy instances loses money. The ``k``-th reserved
    instance is kept while its expected utilisation (mean over hours of
    ``clip(busy − (k − 1), 0, 1)``) exceeds reserved ÷ on-demand price.
    """
    ratio = offer.usd_per_hour / offer.ondemand_usd_per_hour
    count = 0
    while count < planned and np.clip(busy - count, 0.0, 1.0).mean() > ratio:
        count += 1
    return count


def compare_policies(
    jobs: Sequence[Job],
    policies: Sequence[str] = POLICY_NAMES,
    *,
    catalog: Catalog | None = None,
    config: PolicyConfig = DEFAULT_POLICY,
    spot: SpotModel | None = None,
    headroom: float = DEFAULT_HEADROOM,
    reserved: Mapping[str, tuple[Offer, int]] | None = None,
    plan: bool = True,
    energy: EnergyModel | None = None,
    memoise: bool = True,
    progress=None,
    breakdown: Sequence[str] = (),
) -> Comparison:
    """Replay ``jobs`` under each policy; add the bound and the ratios.

    Args:
        jobs: Jobs sorted by submission.
        policies: Names from :data:`POLICY_NAMES`.
        catalog: Offers (default: the shipped snapshot).
        config: ``decide()`` knobs shared by every policy and the bound.
        spot: Spot availability (default: parametric, seed 0).
        headroom: Fixed-fleet size ÷ mean load (queueing disciplines).
        reserved: The hybrid's reservation; ``None`` plans one (see module docstring).
        plan: Plan a reservation when ``reserved`` is None.
        energy: Power/carbon model.
        memoise: Memoise ``decide()`` per needs class and state version.
        progress: Called with one line per stage.
        breakdown: Elastic policies whose cost − bound is split by cause
            (:func:`prefect_cloudsched.simulate.gap.gap_breakdown`, in ``gaps``).
    """
    if not jobs:
        raise InputError("no jobs to replay")
    say = progress or (lambda _line: None)
    catalog = catalog or load_catalog()
    energy = energy or EnergyModel()
    end = max(j.deadline_s for j in jobs)
    spot = spot or SpotModel()
    spot.check_covers(max(j.submit_s + j.duration_s for j in jobs))
    spot.horizon_s = max(spot.horizon_s, 2 * end + 7 * 86400)
    notes: list[str] = []
    if "hybrid" in policies and reserved is None and plan:
        say("planning the hybrid's reservation (forecast + capacity plan)")
        reserved, plan_notes = plan_reservation(jobs, catalog, config)
        notes += plan_notes
    started = time.perf_counter()
    bound = omniscient_bound(jobs, catalog, spot, config)
    bound_seconds = time.perf_counter() - started
    results: dict[str, PolicyResult] = {}
    gaps: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(["on-demand", *policies]):
        say(f"replaying {len(jobs)} jobs under {name}")
        if name in DISCIPLINES:
            fleet = FleetSimulator(
                jobs, catalog, DISCIPLINES[name], config=config, headroom=headroom, energy=energy
            )
            results[name] = summarise_fleet(name, fleet.run())
        else:
            sim = ElasticSimulator(
                jobs,
                catalog,
                ELASTIC_POLICIES[name](),
                spot=spot,
                config=config,
                reserved=reserved if name == "hybrid" else None,
                energy=energy,
                memoise=memoise,
                record_segments=name in breakdown,
            )
            outcome = sim.run()
            results[name] = summarise_elastic(name, outcome)
            if name in breakdown:
                gaps[name] = gap_breakdown(
                    outcome.runs, bound, outcome.reserved, results[name].makespan_s
                )
    ondemand = results["on-demand"].cost
    for result in results.values():
        result.cost_vs_ondemand = result.cost / ondemand if ondemand else None
        low = bound.over(result.placed)
        result.cost_vs_bound = result.cost / low if low else None
    return Comparison(
        results=[results[n] for n in policies],
        bound=bound,
        ondemand_cost=ondemand,
        reserved={k: n for k, (_, n) in (reserved or {}).items()},
        notes=notes,
        bound_seconds=bound_seconds,
        gaps=gaps,
    )


__all__ = [
    "HISTORY_HOURS",
    "POLICY_NAMES",
    "Comparison",
    "compare_policies",
    "hindsight_reservation",
    "hourly_load",
    "no_spot_busy",
    "parse_policies",
    "plan_reservation",
    "worth_reserving",
]
