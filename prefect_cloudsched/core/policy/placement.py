"""``decide()``: the cheapest offer that fits a task, with the reasons why.

Pure and vectorised over the catalog arrays. The task runner calls it once per submitted
task; the simulator calls the same function with a simulated clock.

Expected cost of an offer for a task of ``h`` estimated hours:

* on-demand: ``price × h``;
* reserved: ``0`` marginal while an idle reserved instance exists (the reservation is a sunk
  cost), accounted afterwards at its amortised 1-yr rate;
* spot, with interruption probability ``p = 1 − exp(−λ·h)`` (λ from the catalog's
  interruption band, raised by interruptions already seen this run):
  ``(1 − p)·spot·h + p·(spot·h/2 + od·h_rerun)`` — an interruption wastes on average half
  the spot run, then the rest runs on on-demand (all of it, ``h_rerun = h``, unless the task
  is checkpointable, ``h_rerun = h/2``);
* plus egress when the task's data lives in another region or cloud.

Spot is only considered when the task allows it and the time left before its deadline can
absorb one lost attempt plus the on-demand rerun and two change-overs.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.errors import NoFeasibleOffer

#: USD per GiB moved: same region free; another region of the same cloud; another cloud
#: (internet egress). List prices of AWS and GCP's first tier, rounded.
EGRESS_SAME_CLOUD_USD_PER_GIB = 0.02
EGRESS_CROSS_CLOUD_USD_PER_GIB = 0.09


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Knobs of the placement policy (the ``CloudSchedPolicy`` block maps onto this).

    Attributes:
        allowed_clouds: Only these clouds (``None`` = all).
        allowed_regions: Only these regions (``None`` = all).
        allowed_gpu_types: Only these GPU models (``None`` = all).
        max_spot_band: Worst spot interruption band accepted (``None`` = any).
        change_over: Time to get a replacement instance running after a loss.
        reserved_first: Use idle reserved capacity before anything else.
        max_usd_per_hour: Never choose an offer dearer than this.
    """

    allowed_clouds: frozenset[str] | None = None
    allowed_regions: frozenset[str] | None = None
    allowed_gpu_types: frozenset[str] | None = None
    max_spot_band: str | None = None
    change_over: timedelta = timedelta(minutes=3)
    reserved_first: bool = True
    max_usd_per_hour: float | None = None


DEFAULT_POLICY = PolicyConfig()


@dataclass
class PlacementState:
    """What the dynamic layer knows that the catalog does not. Thread-safe.

    Attributes:
        reserved_free: Idle reserved/committed instances per ``Offer.capacity_key``.
        interruptions: Interruptions seen per ``Offer.capacity_key`` (raise its risk).
        blocked: Offer keys that failed to provision (capacity, quota) → not retried.
    """

    reserved_free: dict[str, int] = field(default_factory=dict)
    interruptions: Counter[str] = field(default_factory=Counter)
    blocked: dict[str, str] = field(default_factory=dict)
    #: Bumped by every change, so a decision can be reused while it is unchanged.
    version: int = field(default=0, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take_reserved(self, capacity_key: str) -> bool:
        """Claim one idle reserved instance; False if none is left (lost a race)."""
        with self._lock:
            if self.reserved_free.get(capacity_key, 0) <= 0:
                return False
            self.reserved_free[capacity_key] -= 1
            self.version += 1
            return True

    def idle_reserved(self) -> dict[str, int]:
        """A snapshot of the idle reserved instances."""
        with self._lock:
            return {k: n for k, n in self.reserved_free.items() if n > 0}

    def release_reserved(self, capacity_key: str) -> None:
        """Give a reserved instance back when its task ends."""
        with self._lock:
            self.reserved_free[capacity_key] = self.reserved_free.get(capacity_key, 0) + 1
            self.version += 1

    def record_interruption(self, capacity_key: str) -> None:
        """Remember a spot loss so the next decision prices the higher risk."""
        with self._lock:
            self.interruptions[capacity_key] += 1
            self.version += 1

    def block(self, offer_key: str, reason: str) -> None:
        """Exclude an offer for the rest of the run (e.g. after a capacity error)."""
        with self._lock:
            self.blocked[offer_key] = reason
            self.version += 1


@dataclass(frozen=True, slots=True)
class Decision:
    """A placement and its explanation; the ledger stores it, the report shows it."""

    offer: Offer
    expected_cost: float
    baseline_offer: Offer
    baseline_cost: float
    interruption_probability: float
    runner_up: Offer | None
    runner_up_cost: float | None
    reasons: tuple[str, ...]
    needs: TaskNeeds
    decided_at: datetime
    deadline: datetime | None
    #: The deadline leaves less than the runtime estimate plus one change-over: even
    #: on-demand may finish late (the runner can fail such a task before it starts).
    deadline_at_risk: bool = False

    @property
    def tag(self) -> str:
        """The one low-cardinality tag put on the task run: ``cloudsched:aws-spot``."""
        return f"cloudsched:{self.offer.cloud}-{self.offer.option.value}"

    def explanation(self) -> str:
        """One paragraph for logs, the ledger and the UI."""
        text = (
            f"chose {self.offer.describe()}: expected ${self.expected_cost:.4f}"
            f" vs on-demand baseline ${self.baseline_cost:.4f}"
            f" ({self.baseline_offer.describe()})"
        )
        if self.interruption_probability:
            text += f"; P(interruption)={self.interruption_probability:.3g}"
        if self.runner_up is not None and self.runner_up_cost is not None:
            text += f"; runner-up {self.runner_up.describe()} at ${self.runner_up_cost:.4f}"
        if self.reasons:
            text += "; " + "; ".join(self.reasons)
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the ledger, artifacts and events)."""
        return {
            "offer": self.offer.key,
            "price_usd_per_hour": self.offer.usd_per_hour,
            "price_source": self.offer.source or "snapshot",
            "expected_cost": round(self.expected_cost, 6),
            "baseline_offer": self.baseline_offer.key,
            "baseline_cost": round(self.baseline_cost, 6),
            "interruption_probability": round(self.interruption_probability, 6),
            "runner_up": self.runner_up.key if self.runner_up else None,
            "runner_up_cost": None
            if self.runner_up_cost is None
            else round(self.runner_up_cost, 6),
            "reasons": list(self.reasons),
            "needs": self.needs.summary(),
            "task_needs": {
                "gpus": self.needs.gpus,
                "gpu_type": self.needs.gpu_type,
                "cpus": self.needs.cpus,
                "memory_gib": self.needs.memory_gib,
                "est_runtime_s": self.needs.est_runtime.total_seconds(),
                "priority": self.needs.priority.value,
                "spot_ok": self.needs.spot_ok,
                "checkpointable": self.needs.checkpointable,
            },
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "deadline_at_risk": self.deadline_at_risk,
        }


def egress_usd_per_gib(
    offer_region: str, offer_cloud: str, data_region: str, data_cloud: str | None
) -> float:
    """Price of moving one GiB of input from ``data_region`` to the offer's region."""
    if data_region == offer_region:
        return 0.0
    if data_cloud is not None and data_cloud != offer_cloud:
        return EGRESS_CROSS_CLOUD_USD_PER_GIB
    return EGRESS_SAME_CLOUD_USD_PER_GIB


def spot_expected_cost(
    spot: np.ndarray, on_demand: np.ndarray, hazard: np.ndarray, hours: float, checkpointable: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Expected cost and interruption probability of spot offers (see module docstring)."""
    p = -np.expm1(-hazard * hours)
    rerun_hours = hours / 2 if checkpointable else hours
    cost = (1 - p) * spot * hours + p * (spot * hours / 2 + on_demand * rerun_hours)
    return cost, p


def spot_slack_needed(needs: TaskNeeds, change_over: timedelta) -> timedelta:
    """Time a spot attempt needs before the deadline: one lost try, the rerun, 2 change-overs."""
    lost = needs.est_runtime / 2 if needs.checkpointable else needs.est_runtime
    return needs.est_runtime + lost + 2 * change_over


def _mask_in(values: np.ndarray, allowed: Iterable[str]) -> np.ndarray:
    return np.isin(values, np.array(sorted(allowed), dtype=object))


def decide(
    needs: TaskNeeds,
    catalog: Catalog,
    *,
    now: datetime | None = None,
    submitted_at: datetime | None = None,
    state: PlacementState | None = None,
    config: PolicyConfig = DEFAULT_POLICY,
) -> Decision:
    """Choose the offer with the lowest expected cost that meets ``needs``.

    Args:
        needs: What the task asks for.
        catalog: Offers to choose from.
        now: The (possibly simulated) current time; deadlines are measured from it.
        submitted_at: When the task was first submitted (relative deadlines count from here).
        state: Reserved capacity, interruptions and blocked offers of this run.
        config: Policy knobs.

    Raises:
        NoFeasibleOffer: nothing in the catalog can run the task; the message says why.
    """
    now = now or datetime.now(UTC)
    deadline = needs.deadline_at(submitted_at or now)
    hours = needs.est_runtime.total_seconds() / 3600
    reasons: list[str] = []

    fits = (catalog.a_vcpus >= needs.cpus) & (catalog.a_mem >= needs.memory_gib)
    if needs.gpus:
        fits &= catalog.a_gpus >= needs.gpus
        if needs.gpu_type:
            fits &= catalog.a_gpu_type == catalog.gpu_code(needs.gpu_type)
    else:
        fits &= catalog.a_gpus == 0  # never burn a GPU instance on CPU work
    if not fits.any():
        raise NoFeasibleOffer(_why_nothing_fits(needs, catalog))

    allowed = fits.copy()
    for label, values, permitted in (
        ("cloud", catalog.a_cloud, config.allowed_clouds),
        ("region", catalog.a_region, config.allowed_regions),
    ):
        if permitted is not None:
            allowed &= _mask_in(values, permitted)
            if not allowed.any():
                raise NoFeasibleOffer(
                    f"no offer fits {needs.summary()} in the allowed {label}s "
                    f"{sorted(permitted)}; widen allowed_{label}s in the policy"
                )
    if config.allowed_gpu_types is not None and needs.gpus:
        codes = [catalog.gpu_code(g) for g in config.allowed_gpu_types]
        allowed &= np.isin(catalog.a_gpu_type, codes)
        if not allowed.any():
            raise NoFeasibleOffer(
                f"no offer fits {needs.summary()} with GPU types "
                f"{sorted(config.allowed_gpu_types)}; widen allowed_gpu_types in the policy"
            )
    if config.max_usd_per_hour is not None:
        allowed &= catalog.a_price <= config.max_usd_per_hour
    if state is not None and state.blocked:
        blocked = _mask_in(catalog.a_key, state.blocked)
        if (allowed & blocked).any():
            reasons.append(f"{int((allowed & blocked).sum())} offer(s) blocked after errors")
        allowed &= ~blocked

    od_code = catalog.option_code(PurchaseOption.ON_DEMAND)
    spot_code = catalog.option_code(PurchaseOption.SPOT)
    res_code = catalog.option_code(PurchaseOption.RESERVED)
    is_od = catalog.a_option == od_code
    is_spot = catalog.a_option == spot_code
    is_res = catalog.a_option == res_code

    cost = catalog.a_price * hours
    probability = np.zeros(len(catalog))
    candidates = allowed & is_od

    if needs.allows_spot:
        spot_ok = allowed & is_spot
        if config.max_spot_band is not None:
            spot_ok &= _band_at_most(catalog, config.max_spot_band)
        slack_needed = spot_slack_needed(needs, config.change_over)
        if deadline is not None and deadline - now < slack_needed:
            reasons.append(
                f"spot excluded: {_fmt(deadline - now)} to the deadline < {_fmt(slack_needed)}"
                " needed to absorb an interruption"
            )
        elif spot_ok.any():
            hazard = catalog.a_hazard
            if state is not None and state.interruptions:
                bump = np.ones(len(catalog))
                for capacity_key, count in state.interruptions.items():
                    bump[catalog.a_capacity_key == capacity_key] += count
                hazard = hazard * bump
            spot_cost, p = spot_expected_cost(
                catalog.a_price, catalog.a_od_price, hazard, hours, needs.checkpointable
            )
            cost = np.where(is_spot, spot_cost, cost)
            probability = np.where(is_spot, p, probability)
            candidates |= spot_ok
    elif needs.spot_ok:
        reasons.append("spot excluded: realtime priority")

    reserved_idx = _idle_reserved(catalog, allowed & is_res, state)
    if reserved_idx is not None:
        cost = cost.copy()
        cost[reserved_idx] = 0.0
        candidates[reserved_idx] = True

    if needs.data_region and needs.input_gib > 0:
        cost = cost + needs.input_gib * _egress_vector(catalog, needs.data_region)

    if not candidates.any():
        raise NoFeasibleOffer(
            f"no allowed offer fits {needs.summary()}"
            + (f" ({'; '.join(reasons)})" if reasons else "")
            + "; relax the policy or the needs"
        )
    at_risk = deadline is not None and deadline - now < needs.est_runtime + config.change_over
    if at_risk:
        reasons.append(
            f"deadline at risk: {_fmt(deadline - now)} left for ~{_fmt(needs.est_runtime)} of work"
        )

    ranked = np.flatnonzero(candidates)
    order = ranked[np.lexsort((catalog.a_price[ranked], probability[ranked], cost[ranked]))]
    best = order[0]
    if config.reserved_first and reserved_idx is not None and reserved_idx.size:
        best = reserved_idx[0]
    chosen = catalog.offers[best]
    runner_up_idx = next(
        (
            i
            for i in order
            if catalog.offers[i].capacity_key != chosen.capacity_key
            or catalog.offers[i].option is not chosen.option
        ),
        None,
    )

    od_allowed = np.flatnonzero(allowed & is_od)
    pool = od_allowed if od_allowed.size else np.flatnonzero(fits & is_od)
    baseline_price = catalog.a_price
    if not pool.size:  # a catalog without on-demand rows: price the fitting shapes at list
        pool, baseline_price = np.flatnonzero(fits), catalog.a_od_price
    baseline_costs = baseline_price[pool] * hours
    if needs.data_region and needs.input_gib > 0:
        baseline_costs = (
            baseline_costs + needs.input_gib * _egress_vector(catalog, needs.data_region)[pool]
        )
    base_i = pool[int(np.argmin(baseline_costs))]

    return Decision(
        offer=chosen,
        expected_cost=float(cost[best]),
        baseline_offer=catalog.offers[base_i],
        baseline_cost=float(baseline_costs.min()),
        interruption_probability=float(probability[best]),
        runner_up=None if runner_up_idx is None else catalog.offers[runner_up_idx],
        runner_up_cost=None if runner_up_idx is None else float(cost[runner_up_idx]),
        reasons=tuple(reasons),
        needs=needs,
        decided_at=now,
        deadline=deadline,
        deadline_at_risk=at_risk,
    )


def _idle_reserved(
    catalog: Catalog, mask: np.ndarray, state: PlacementState | None
) -> np.ndarray | None:
    if state is None or not state.reserved_free or not mask.any():
        return None
    free = [k for k, n in state.reserved_free.items() if n > 0]
    hits = np.flatnonzero(mask & _mask_in(catalog.a_capacity_key, free))
    # cheapest reservation first: a 1-GPU task belongs on the idle 1-GPU host, not the 2-GPU one
    return hits[np.argsort(catalog.a_price[hits], kind="stable")] if hits.size else None


_EGRESS_CACHE: dict[tuple[int, str], np.ndarray] = {}


def _egress_vector(catalog: Catalog, data_region: str) -> np.ndarray:
    key = (id(catalog), data_region)
    vector = _EGRESS_CACHE.get(key)
    if vector is None:
        data_cloud = catalog.cloud_of_region(data_region)
        vector = np.fromiter(
            (
                egress_usd_per_gib(o.region, o.cloud, data_region, data_cloud)
                for o in catalog.offers
            ),
            float,
            len(catalog),
        )
        _EGRESS_CACHE[key] = vector
    return vector


def _band_at_most(catalog: Catalog, band: str) -> np.ndarray:
    from prefect_cloudsched.core.catalog import BAND_ORDER

    worst = BAND_ORDER.index(band)
    ok = {b for b in BAND_ORDER[: worst + 1]}
    return np.fromiter((o.interruption_band in ok for o in catalog.offers), bool, len(catalog))


def _why_nothing_fits(needs: TaskNeeds, catalog: Catalog) -> str:
    if needs.gpus:
        same_type = (
            catalog.a_gpu_type == catalog.gpu_code(needs.gpu_type)
            if needs.gpu_type
            else catalog.a_gpus > 0
        )
        if not same_type.any():
            return f"no offer has GPU type {needs.gpu_type}; known: {', '.join(catalog.gpu_types)}"
        most = int(catalog.a_gpus[same_type].max())
        if needs.gpus > most:
            return (
                f"gpus={needs.gpus} of {needs.gpu_type or 'any type'}: the largest instance"
                f" has {most}; split the task or lower gpus"
            )
        rows = same_type & (catalog.a_gpus >= needs.gpus)
        return (
            f"no {needs.gpu_type or 'GPU'} instance with >= {needs.gpus} GPUs has "
            f"cpus >= {needs.cpus:g} and memory_gib >= {needs.memory_gib:g} (largest: "
            f"{catalog.a_vcpus[rows].max():g} vCPU, {catalog.a_mem[rows].max():g} GiB)"
        )
    cpu_rows = catalog.a_gpus == 0
    return (
        f"no CPU instance has cpus >= {needs.cpus:g} and memory_gib >= {needs.memory_gib:g}"
        f" (largest: {catalog.a_vcpus[cpu_rows].max():g} vCPU,"
        f" {catalog.a_mem[cpu_rows].max():g} GiB); lower the needs"
    )


def _fmt(value: timedelta) -> str:
    seconds = value.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds >= 3600:
        return f"{sign}{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{sign}{math.floor(seconds / 60)}m"
    return f"{sign}{seconds:.0f}s"


def cost_of(offer: Offer, runtime_seconds: float) -> float:
    """What ``runtime_seconds`` on ``offer`` costs (reserved at its amortised rate)."""
    return offer.usd_per_hour * runtime_seconds / 3600


__all__ = [
    "DEFAULT_POLICY",
    "Decision",
    "PlacementState",
    "PolicyConfig",
    "cost_of",
    "decide",
    "spot_expected_cost",
    "spot_slack_needed",
]
