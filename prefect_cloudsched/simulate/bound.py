"""The omniscient lower bound: the least any policy could pay, knowing all arrivals and spot.

Jobs separate, so the bound is an exact per-job computation, summed. For job ``j`` with
work ``W`` (seconds), window ``[submit, deadline]`` and the offers ``O_j`` that fit it under
the replay's policy config (the feasibility filter of ``decide()``, mirrored in
:func:`fitting_offers`):

* ``floor_j`` = the cheapest hourly rate among fitting on-demand offers and fitting
  reserved offers (reserved priced at its amortised rate and only while used);
* ``p_j(t)`` = min(``floor_j``, the price of every fitting spot offer available at ``t``
  in *any* of its zones) — spot only if the job tolerates it;
* ``LB_j`` = the integral of the ``W`` cheapest seconds of ``p_j`` over the window.

Why no policy that meets every deadline can pay less for a job: it runs ``W`` seconds of
work on fitting instances inside the window; each such second is paid at least ``p_j(t)``
(a spot second only while that spot capacity is up somewhere; an on-demand second at its
price ≥ ``floor_j``; a reserved second at ``rate × held time ≥ rate × used time``, and a
fixed fleet second likewise at its price × held time); change-overs, lost work,
preemption restarts and the 60-s minimum bill only add. The bound relaxes everything a real
schedule must respect — contiguity, the single instance at a time, capacity of reserved
pools — so it may be unattainable, but never too high. A policy that *misses* deadlines
may run outside the window and so can fall below the bound; the reports show misses next
to cost for that reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prefect_cloudsched.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.needs import TaskNeeds
from prefect_cloudsched.policy import DEFAULT_POLICY, PolicyConfig
from prefect_cloudsched.simulate.engine import needs_class_key
from prefect_cloudsched.simulate.jobs import Job
from prefect_cloudsched.simulate.spot import SpotModel


@dataclass(frozen=True, slots=True)
class FitPrices:
    """What the bound needs per needs class: the floor rate and cheaper spot offers."""

    floor_usd_per_hour: float | None
    spot: tuple[Offer, ...]


@dataclass(frozen=True, slots=True)
class BoundResult:
    """Per-job lower bounds (USD) and their sum; ``None`` for jobs nothing fits."""

    total: float
    per_job: tuple[float | None, ...]

    def over(self, indices: Sequence[int]) -> float:
        """The bound restricted to some jobs (e.g. the ones a policy could place)."""
        return float(sum(self.per_job[i] or 0.0 for i in indices))


def fitting_offers(needs: TaskNeeds, catalog: Catalog, config: PolicyConfig) -> list[Offer]:
    """Offers ``decide()`` would consider feasible for ``needs`` (before purchase rules)."""
    fits = (catalog.a_vcpus >= needs.cpus) & (catalog.a_mem >= needs.memory_gib)
    if needs.gpus:
        fits &= catalog.a_gpus >= needs.gpus
        if needs.gpu_type:
            fits &= catalog.a_gpu_type == catalog.gpu_code(needs.gpu_type)
    else:
        fits &= catalog.a_gpus == 0
    if config.allowed_clouds is not None:
        fits &= np.isin(catalog.a_cloud, sorted(config.allowed_clouds))
    if config.allowed_regions is not None:
        fits &= np.isin(catalog.a_region, sorted(config.allowed_regions))
    if config.allowed_gpu_types is not None and needs.gpus:
        fits &= np.isin(catalog.a_gpu_type, [catalog.gpu_code(g) for g in config.allowed_gpu_types])
    if config.max_usd_per_hour is not None:
        fits &= catalog.a_price <= config.max_usd_per_hour
    return [catalog.offers[i] for i in np.flatnonzero(fits)]


def fit_prices(needs: TaskNeeds, catalog: Catalog, config: PolicyConfig) -> FitPrices:
    """Floor rate (on-demand or reserved) and the spot offers cheaper than it, cheapest first."""
    offers = fitting_offers(needs, catalog, config)
    steady = [o.usd_per_hour for o in offers if o.option is not PurchaseOption.SPOT]
    floor = min(steady) if steady else None
    spot: list[Offer] = []
    if needs.allows_spot:
        spot = sorted(
            (
                o
                for o in offers
                if o.option is PurchaseOption.SPOT and (floor is None or o.usd_per_hour < floor)
            ),
            key=lambda o: (o.usd_per_hour, o.key),
        )
    return FitPrices(floor, tuple(spot))


def job_bound(job: Job, prices: FitPrices, spot: SpotModel) -> float | None:
    """``LB_j``: the ``W`` cheapest seconds of the job's price curve inside its window."""
    need = job.duration_s
    start, end = job.submit_s, job.deadline_s
    cost = 0.0
    covered: list[tuple[float, float]] = []
    for offer in prices.spot:
        if need <= 0:
            break
        lane = spot.union(offer)
        first = max(bisect.bisect_right(lane.starts, start) - 1, 0)
        fresh: list[tuple[float, float]] = []
        for i in range(first, len(lane.starts)):
            s, e = max(lane.starts[i], start), min(lane.ends[i], end)
            if lane.starts[i] >= end:
                break
            if e > s:
                fresh.extend(_subtract((s, e), covered))
        gained = sum(e - s for s, e in fresh)
        take = min(need, gained)
        cost += take * offer.usd_per_hour / 3600
        need -= take
        covered = _union(covered + fresh)
    if need > 0:
        if prices.floor_usd_per_hour is None:
            return None if not prices.spot else cost + need * prices.spot[0].usd_per_hour / 3600
        cost += need * prices.floor_usd_per_hour / 3600
    return cost


def _subtract(span: tuple[float, float], covered: list[tuple[float, float]]) -> list:
    s, e = span
    out: list[tuple[float, float]] = []
    for cs, ce in covered:
        if ce <= s or cs >= e:
            continue
        if cs > s:
            out.append((s, cs))
        s = max(s, ce)
        if s >= e:
            break
    if s < e:
        out.append((s, e))
    return out


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def omniscient_bound(
    jobs: Sequence[Job],
    catalog: Catalog,
    spot: SpotModel,
    config: PolicyConfig = DEFAULT_POLICY,
) -> BoundResult:
    """The sum of per-job lower bounds (see the module docstring for the argument)."""
    by_class: dict[tuple, FitPrices] = {}
    per_job: list[float | None] = []
    for job in jobs:
        key = needs_class_key(job.needs)
        prices = by_class.get(key)
        if prices is None:
            prices = by_class[key] = fit_prices(job.needs, catalog, config)
        per_job.append(job_bound(job, prices, spot))
    return BoundResult(float(sum(v for v in per_job if v is not None)), tuple(per_job))


__all__ = [
    "BoundResult",
    "FitPrices",
    "fit_prices",
    "fitting_offers",
    "job_bound",
    "omniscient_bound",
]
