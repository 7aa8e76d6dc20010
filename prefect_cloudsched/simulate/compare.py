"""Run several policies on the same jobs and the same spot world, plus the omniscient bound.

The hybrid's reservation comes from the project's own static layer, as in production: the
hourly demand of the first ``history_hours`` of the replay (per GPU model, and vCPUs for
CPU jobs, of the instance types ``decide()`` picks on-demand) is forecast for the rest of the
replay with :func:`prefect_cloudsched.forecast.fit_forecast` (median, the next
``history_hours``), and :func:`prefect_cloudsched.planning.plan_capacity` sizes the
reservation over history + forecast. The reservation is then held for the whole replay
(its first week included) and charged in full. Replays shorter than ``history_hours`` + 1
day plan no reservation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from prefect_cloudsched.catalog import Catalog, Offer, load_catalog
from prefect_cloudsched.energy import EnergyModel
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.policy import DEFAULT_POLICY, PlacementState, PolicyConfig
from prefect_cloudsched.policy.baselines import DISCIPLINES
from prefect_cloudsched.policy.spot_policies import ELASTIC_POLICIES
from prefect_cloudsched.simulate.bound import BoundResult, omniscient_bound
from prefect_cloudsched.simulate.engine import DecisionCache, ElasticSimulator, JobRun
from prefect_cloudsched.simulate.fleet import DEFAULT_HEADROOM, FleetSimulator
from prefect_cloudsched.simulate.jobs import Job
from prefect_cloudsched.simulate.metrics import PolicyResult, summarise_elastic, summarise_fleet
from prefect_cloudsched.simulate.spot import SpotModel

POLICY_NAMES: tuple[str, ...] = (*DISCIPLINES, *ELASTIC_POLICIES)
HISTORY_HOURS = 168
#: One seasonal-AR spec instead of the forecaster's full grid: ~3 s per series here, against
#: about a minute for the grid on the shared 2-core machine.
FORECAST_ORDER = ((1, 0, 0), (0, 1, 1, 24))


@dataclass
class Comparison:
    """Every policy's figures on one replay, the bound and the hybrid's reservation."""

    results: list[PolicyResult]
    bound: BoundResult
    ondemand_cost: float
    reserved: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bound_seconds: float = 0.0


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


def plan_reservation(
    jobs: Sequence[Job],
    catalog: Catalog,
    config: PolicyConfig = DEFAULT_POLICY,
    *,
    history_hours: int = HISTORY_HOURS,
    time_limit_s: float = 30.0,
) -> tuple[dict[str, tuple[Offer, int]], list[str]]:
    """Forecast → capacity plan → reserved instances per capacity key (module docstring)."""
    import pandas as pd

    from prefect_cloudsched.forecast import ForecastConfig, fit_forecast
    from prefect_cloudsched.planning import demand_from_forecast, plan_capacity

    end = max(j.submit_s + j.duration_s for j in jobs)
    hours = int(end // 3600)
    if hours < history_hours + 24:
        return {}, [f"no reservation: the replay spans {hours} h < {history_hours + 24} h"]
    cache = DecisionCache(catalog, config, PlacementState())
    # One job per instance: per resource class, the shape most work runs on is the one the
    # plan may reserve, and its demand counts whole instances (× their units), so a reserved
    # instance is exactly one job's worth of capacity.
    rows: dict[tuple[str, str, str | None], list[tuple[float, float]]] = {}
    units: dict[tuple[str, str, str | None], float] = {}
    work: dict[tuple[str, str, str | None], float] = {}
    spot_work = total_work = 0.0
    for i, job in enumerate(jobs):
        offer = cache.decide(JobRun(i, job, cache.class_of(job.needs)), job.submit_s, "od")
        if offer is None:
            continue
        name = f"gpu:{offer.gpu_type}" if offer.gpu_count else "vcpu"
        shape = (name, offer.capacity_key, offer.gpu_type)
        rows.setdefault(shape, []).append((job.submit_s, job.submit_s + job.duration_s))
        units[shape] = float(offer.gpu_count or offer.vcpus)
        work[shape] = work.get(shape, 0.0) + job.duration_s
        if job.submit_s < history_hours * 3600:
            total_work += job.duration_s
            spot_work += job.duration_s if job.needs.allows_spot else 0.0
    dominant: dict[str, tuple[str, str, str | None]] = {}
    for shape in sorted(work, key=lambda k: -work[k]):
        dominant.setdefault(shape[0], shape)
    demand: dict[str, list[float]] = {}
    for name, shape in dominant.items():
        arr = np.asarray(rows[shape])
        series = hourly_load(arr[:, 0], arr[:, 1], np.full(len(arr), units[shape]), hours)
        history = pd.Series(series[:history_hours])
        forecast = fit_forecast(
            history,
            horizon=min(history_hours, hours - history_hours),
            config=ForecastConfig(
                orders=(FORECAST_ORDER,), transform="none", weekly_fourier=0, calibrate=False
            ),
        )
        demand[name] = [*history.tolist(), *demand_from_forecast(forecast, 0.5)]
    # Only those shapes, with their GPU model: GCP N1 offers with different attached GPUs
    # share an offer key, and the planner keys candidates by offer key.
    keep = {(capacity_key, gpu) for _, capacity_key, gpu in dominant.values()}
    sub = Catalog(o for o in catalog.offers if (o.capacity_key, o.gpu_type) in keep)
    plan = plan_capacity(
        demand,
        sub,
        spot_max_share=min(0.9, spot_work / total_work) if total_work else 0.0,
        clouds=sorted(config.allowed_clouds) if config.allowed_clouds else None,
        regions=sorted(config.allowed_regions) if config.allowed_regions else None,
        time_limit_s=time_limit_s,
    )
    busy = {
        capacity_key: np.asarray(demand[name]) / units[(name, capacity_key, gpu)]
        for name, (_, capacity_key, gpu) in dominant.items()
    }
    reserved: dict[str, tuple[Offer, int]] = {}
    for item in plan.reserved:
        offer = sub.find(item.offer_key)
        count = worth_reserving(busy[item.capacity_key], item.count, offer)
        if count > 0:
            reserved[item.capacity_key] = (offer, count)
    notes = [f"reservation planned ({plan.status}, {plan.solve_seconds:.1f} s): "
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
            )
            results[name] = summarise_elastic(name, sim.run())
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
    )


__all__ = [
    "HISTORY_HOURS",
    "POLICY_NAMES",
    "Comparison",
    "compare_policies",
    "hourly_load",
    "parse_policies",
    "plan_reservation",
    "worth_reserving",
]
