"""The omniscient lower bound: the least any policy could pay, knowing all arrivals and spot.

Two valid bounds are computed and the larger is reported.

**Per-second bound** (jobs separate, exact per job, summed). For job ``j`` with work ``W``
(seconds), window ``[submit, deadline]`` and the offers ``O_j`` that fit it under the
replay's policy config (the feasibility filter of ``decide()``, shared through
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
preemption restarts and the 60-s minimum bill only add.

**Held-capacity bound** (:func:`held_capacity_bound`). The per-second bound prices held
capacity as if it were paid only while used. Every policy here pays held capacity (a
reservation, a fixed fleet) for the whole replay, which lasts at least
``T0 = max_j(submit_j + W_j)``, and pays every instance it does not hold per second with a
60-s minimum. For job ``j`` let

* ``c_j`` = the ``W`` cheapest seconds of ``min(on-demand floor, spot up)`` in the window
  + ``max(0, 60 − W) × p_min`` (``p_min``: the cheapest billed rate that fits) — the least
  it pays on billed instances alone: its billed work seconds cost at least the cheapest
  ones, and each billed segment of ``e`` seconds with ``w`` seconds of work is billed
  ``max(e, 60) ≥ w + (60 − w)⁺`` seconds, so the segments together pay at least
  ``p_min × (60 − W)⁺`` more than their useful work;
* ``v_j`` = max(the dearest rate among those cheapest seconds, ``c_j / W``): moving ``a``
  seconds of its work onto held capacity saves at most ``min(c_j, a × v_j)``;
* ``ρ_j`` = the cheapest fitting on-demand or reserved rate: a held instance that serves
  it costs at least that much per second.

Held instances of total rate ``Q`` cost at least ``Q × T0``. At any moment each runs one
job, and a job runs on one instance, inside its window; so the jobs on held capacity at
``t`` have ``Σ ρ_j ≤ Q``, and the savings are at most ``K(Q)`` = the integral over time
of the best fractional knapsack of the jobs whose window is open (value ``v_j``, weight
``ρ_j``, capacity ``Q``), and at most ``C = Σ c_j``. Every schedule that meets its
deadlines therefore pays at least ``F(Q) = Q × T0 + C − min(C, K(Q))`` for its ``Q``, and
the bound is ``min over Q ≥ 0`` of ``F``. ``F`` is convex (linear minus concave), so the
minimum is bracketed from below by tangents at grid points of ``Q``.

Both bounds relax contiguity, the integrality of held instances and which shapes they
are, so they may be unattainable, but they are never too high. A policy that *misses*
deadlines may run outside the window and so can fall below the bound; the reports show
misses next to cost for that reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import DEFAULT_POLICY, PolicyConfig
from prefect_cloudsched.core.policy.offer_filter import fitting
from prefect_cloudsched.simulate.engine import MIN_BILLED_S, needs_class_key
from prefect_cloudsched.simulate.jobs import Job
from prefect_cloudsched.simulate.spot import SpotModel


@dataclass(frozen=True, slots=True)
class FitPrices:
    """What the bound needs per needs class: floor rates and the cheaper spot offers.

    ``floor_usd_per_hour`` is the cheapest fitting on-demand or reserved rate (the
    per-second bound's floor), ``ondemand_usd_per_hour`` the cheapest fitting on-demand
    rate (a billed instance's floor), ``spot`` the fitting spot offers cheaper than the
    floor and ``spot_under_ondemand`` those cheaper than the on-demand floor.
    """

    floor_usd_per_hour: float | None
    spot: tuple[Offer, ...]
    ondemand_usd_per_hour: float | None = None
    spot_under_ondemand: tuple[Offer, ...] = ()


@dataclass(frozen=True, slots=True)
class BoundResult:
    """Per-job lower bounds (USD) and their sum; ``None`` for jobs nothing fits.

    ``total`` is the larger of two valid bounds: ``per_second_total`` (held capacity priced
    only while used) and ``held_total`` (held capacity paid over the whole replay, minimum
    bills; see :func:`held_capacity_bound`). When the second is larger, ``per_job`` is the
    first scaled to it, so ``over`` a subset of jobs is a share, not a proof.
    """

    total: float
    per_job: tuple[float | None, ...]
    per_second_total: float = 0.0
    held_total: float = 0.0
    held_usd_per_hour: float = 0.0

    def over(self, indices: Sequence[int]) -> float:
        """The bound restricted to some jobs (e.g. the ones a policy could place)."""
        if len(indices) == len(self.per_job):
            return self.total
        return float(sum(self.per_job[i] or 0.0 for i in indices))


def fitting_offers(needs: TaskNeeds, catalog: Catalog, config: PolicyConfig) -> list[Offer]:
    """Offers ``decide()`` would consider feasible for ``needs`` (before purchase rules)."""
    return [catalog.offers[i] for i in np.flatnonzero(fitting(needs, catalog, config))]


def fit_prices(needs: TaskNeeds, catalog: Catalog, config: PolicyConfig) -> FitPrices:
    """Floor rates (on-demand or reserved; on-demand) and the spot offers cheaper than them."""
    offers = fitting_offers(needs, catalog, config)
    steady = [o.usd_per_hour for o in offers if o.option is not PurchaseOption.SPOT]
    ondemand = [o.usd_per_hour for o in offers if o.option is PurchaseOption.ON_DEMAND]
    floor = min(steady) if steady else None
    od_floor = min(ondemand) if ondemand else None
    spot: list[Offer] = []
    if needs.allows_spot:
        spot = sorted(
            (o for o in offers if o.option is PurchaseOption.SPOT),
            key=lambda o: (o.usd_per_hour, o.key),
        )
    return FitPrices(
        floor,
        tuple(o for o in spot if floor is None or o.usd_per_hour < floor),
        od_floor,
        tuple(o for o in spot if od_floor is None or o.usd_per_hour < od_floor),
    )


def job_bound(job: Job, prices: FitPrices, spot: SpotModel) -> float | None:
    """``LB_j``: the ``W`` cheapest seconds of the job's price curve inside its window."""
    return cheapest_seconds(job, prices.spot, prices.floor_usd_per_hour, spot)[0]


def cheapest_seconds(
    job: Job, offers: Sequence[Offer], floor: float | None, spot: SpotModel
) -> tuple[float | None, float]:
    """(cost of the ``W`` cheapest seconds of ``min(floor, spot up)`` in the window, the
    dearest rate among those seconds, USD/h)."""
    need = job.duration_s
    start, end = job.submit_s, job.deadline_s
    cost = 0.0
    dearest = 0.0
    covered: list[tuple[float, float]] = []
    for offer in offers:
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
        if take > 0:
            dearest = offer.usd_per_hour
        need -= take
        covered = _union(covered + fresh)
    if need > 0:
        if floor is None:
            if not offers:
                return None, dearest
            return cost + need * offers[0].usd_per_hour / 3600, offers[0].usd_per_hour
        cost += need * floor / 3600
        dearest = floor
    return cost, dearest


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
    *,
    min_billed_s: float = MIN_BILLED_S,
) -> BoundResult:
    """The larger of the per-second bound and the held-capacity bound (module docstring)."""
    by_class: dict[tuple, FitPrices] = {}
    per_job: list[float | None] = []
    prices_of: list[FitPrices] = []
    for job in jobs:
        key = needs_class_key(job.needs)
        prices = by_class.get(key)
        if prices is None:
            prices = by_class[key] = fit_prices(job.needs, catalog, config)
        prices_of.append(prices)
        per_job.append(job_bound(job, prices, spot))
    per_second = float(sum(v for v in per_job if v is not None))
    placeable = [i for i, v in enumerate(per_job) if v is not None]  # nothing fits the rest
    held, rate = held_capacity_bound(
        [jobs[i] for i in placeable],
        [prices_of[i] for i in placeable],
        spot,
        min_billed_s=min_billed_s,
    )
    if held is None or held <= per_second:
        return BoundResult(per_second, tuple(per_job), per_second, held or 0.0, rate)
    scale = held / per_second if per_second > 0 else 1.0
    scaled = tuple(None if v is None else v * scale for v in per_job)
    return BoundResult(held, scaled, per_second, held, rate)


def held_capacity_bound(
    jobs: Sequence[Job],
    prices_of: Sequence[FitPrices],
    spot: SpotModel,
    *,
    min_billed_s: float = MIN_BILLED_S,
    grid: int = 128,
) -> tuple[float | None, float]:
    """A lower bound that charges held capacity for the whole replay (module docstring).

    Returns (the bound, the held rate in USD/h at which it is reached), or (None, 0) when a
    job has no fitting on-demand offer (the argument needs one).
    """
    n = len(jobs)
    if not n:
        return 0.0, 0.0
    terms = _job_terms(jobs, prices_of, spot, min_billed_s)
    if terms is None:
        return None, 0.0
    billed, value, rho = terms
    total_billed = float(billed.sum())
    horizon = max(j.submit_s + j.duration_s for j in jobs)  # no replay ends earlier
    # Sweep the windows: in each stretch between window edges, K(Q) += length × the best
    # value held capacity Q ($/s) can save (fractional knapsack by value ÷ rate).
    times = np.concatenate([[j.submit_s for j in jobs], [j.deadline_s for j in jobs]])
    kinds = np.concatenate([np.ones(n, dtype=int), -np.ones(n, dtype=int)])
    idx = np.concatenate([np.arange(n), np.arange(n)])
    order = np.lexsort((-kinds, times))
    # Largest capacity that could ever be busy: the most rate open at once.
    open_rate = np.cumsum(np.where(kinds[order] > 0, rho[idx[order]], -rho[idx[order]]))
    q_max = float(open_rate.max()) if n else 0.0
    if q_max <= 0:
        return total_billed, 0.0
    steps = np.cumsum(np.sort(rho))
    qs = np.unique(np.concatenate([
        np.linspace(0.0, q_max, grid), np.geomspace(q_max * 1e-4, q_max, grid // 2),
        steps[steps <= q_max][:grid],
    ]))  # fmt: skip
    if qs[-1] < q_max:
        qs = np.append(qs, q_max)
    spans, members = _open_stretches(order, times, kinds, idx)
    saved, slope = _knapsack_savings(qs, spans, members, value, rho)
    capped = saved >= total_billed
    f = qs * horizon + total_billed - np.minimum(total_billed, saved)
    right = np.where(capped, horizon, horizon - slope)  # a subgradient of convex F at qs
    best, at_best = _convex_minimum(qs, f, right)
    return max(best, 0.0), at_best * 3600


def _job_terms(
    jobs: Sequence[Job], prices_of: Sequence[FitPrices], spot: SpotModel, min_billed_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per job ``c_j`` (USD), ``v_j`` and ``ρ_j`` (USD/s); ``None`` if one lacks on-demand."""
    n = len(jobs)
    billed = np.empty(n)  # c_j: least a job pays on billed instances only, USD
    value = np.empty(n)  # v_j: most a held second can save it, USD/s
    rho = np.empty(n)  # cheapest held rate that fits it, USD/s
    for i, (job, prices) in enumerate(zip(jobs, prices_of, strict=True)):
        od = prices.ondemand_usd_per_hour
        if od is None or prices.floor_usd_per_hour is None:
            return None
        cost, dearest = cheapest_seconds(job, prices.spot_under_ondemand, od, spot)
        assert cost is not None
        cheapest = min([od, *(o.usd_per_hour for o in prices.spot_under_ondemand[:1])])
        work = max(job.duration_s, 1e-9)
        billed[i] = cost + max(0.0, min_billed_s - job.duration_s) * cheapest / 3600
        value[i] = max(dearest / 3600, billed[i] / work)
        rho[i] = prices.floor_usd_per_hour / 3600
    return billed, value, rho


def _open_stretches(
    order: np.ndarray, times: np.ndarray, kinds: np.ndarray, idx: np.ndarray
) -> tuple[list[float], list[tuple[int, ...]]]:
    """The stretches between window edges: their lengths and the jobs whose window is open."""
    spans: list[float] = []
    members: list[tuple[int, ...]] = []
    active: dict[int, None] = {}
    last = None
    for k in order:
        t = times[k]
        if active and last is not None and t > last:
            spans.append(t - last)
            members.append(tuple(active))
        last = t
        if kinds[k] > 0:
            active[int(idx[k])] = None
        else:
            active.pop(int(idx[k]), None)
    return spans, members


def _knapsack_savings(
    qs: np.ndarray,
    spans: list[float],
    members: list[tuple[int, ...]],
    value: np.ndarray,
    rho: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``K(q)`` and its slope at each grid capacity ``q``, summed over the stretches.

    Stretches are grouped by how many windows are open, padded and done in numpy blocks.
    """
    n = len(rho)
    ratio = value / rho
    saved = np.zeros(len(qs))
    slope = np.zeros(len(qs))
    sizes = np.fromiter((len(m) for m in members), int, len(members))
    span_arr = np.asarray(spans)
    for low, high in ((1, 1), (2, 4), (5, 16), (17, 64), (65, 256), (257, 1 << 30)):
        rows = np.flatnonzero((sizes >= low) & (sizes <= high))
        if not rows.size:
            continue
        width = int(sizes[rows].max())
        block = max(1, int(2e7 // (width * len(qs))))
        for first in range(0, rows.size, block):
            chunk = rows[first : first + block]
            pad = np.full((chunk.size, width), n, dtype=int)  # index n = an empty slot
            for r, i in enumerate(chunk):
                pad[r, : sizes[i]] = members[i]
            s_ratio = np.append(ratio, -1.0)[pad]
            rank = np.argsort(-s_ratio, axis=1, kind="stable")
            s_rho = np.take_along_axis(np.append(rho, 0.0)[pad], rank, 1)
            s_value = np.take_along_axis(np.append(value, 0.0)[pad], rank, 1)
            s_ratio = np.maximum(np.take_along_axis(s_ratio, rank, 1), 0.0)
            zero = np.zeros((chunk.size, 1))
            cum_rate = np.hstack([zero, np.cumsum(s_rho, 1)])
            cum_value = np.hstack([zero, np.cumsum(s_value, 1)])
            # items wholly inside capacity q: count of cumulative rates ≤ q
            at = (cum_rate[:, 1:, None] <= qs[None, None, :]).sum(1)
            full = np.take_along_axis(cum_value, at, 1)
            used = np.take_along_axis(cum_rate, at, 1)
            marginal = np.take_along_axis(np.hstack([s_ratio, zero]), at, 1)
            length = span_arr[chunk][:, None]
            saved += (length * (full + (qs[None, :] - used) * marginal)).sum(0)
            slope += (length * marginal).sum(0)
    return saved, slope


def _convex_minimum(qs: np.ndarray, f: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """A lower bound on ``min F`` and the grid capacity where it is reached.

    F is convex: on [q_a, q_b] it lies above both tangents, so the least of their upper
    envelope there is a valid lower bound for the minimum over that stretch.
    """
    best = float(f.min())
    at_best = float(qs[int(f.argmin())])
    for a in range(len(qs) - 1):
        lo, hi = qs[a], qs[a + 1]
        ga, gb = right[a], right[a + 1]
        if ga >= 0 or (f[a + 1] <= f[a] and gb <= 0):
            continue
        # lines: f_a + ga (q − lo) and f_b + gb (q − hi); gb ≥ ga (convexity)
        if gb > ga:
            cross = (f[a + 1] - f[a] + ga * lo - gb * hi) / (ga - gb)
            cross = min(max(cross, lo), hi)
            low = max(f[a] + ga * (cross - lo), f[a + 1] + gb * (cross - hi))
        else:
            low = min(f[a], f[a + 1])
        if low < best:
            best, at_best = low, float(lo)
    return best, at_best


__all__ = [
    "BoundResult",
    "FitPrices",
    "cheapest_seconds",
    "fit_prices",
    "fitting_offers",
    "held_capacity_bound",
    "job_bound",
    "omniscient_bound",
]
