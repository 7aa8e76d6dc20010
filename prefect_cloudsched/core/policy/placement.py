"""``decide()``: the cheapest offer that fits a task, with the reasons why.

Pure and vectorised over the catalog arrays. The task runner calls it once per submitted
task; the simulator calls the same function with a simulated clock.

Expected cost of an offer for a task of ``h`` estimated hours:

* on-demand: ``price × h``;
* reserved: its amortised 1-yr rate × ``h`` — what its ledger row will be charged — while
  the *ranking* uses its marginal cost, ``0`` while an idle reserved instance exists (the
  commitment is paid whether used or not; :mod:`prefect_cloudsched.core.accounting`);
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from prefect_cloudsched.core.accounting import charge_usd, marginal_cost, spot_expected_cost
from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy.config import DEFAULT_POLICY, PolicyConfig
from prefect_cloudsched.core.policy.offer_filter import (
    explain_nothing_allowed,
    explain_nothing_fits,
    policy_allows,
    price_excluded,
    shape_fits,
    within_spot_band,
)
from prefect_cloudsched.errors import NoFeasibleOffer

#: USD per GiB moved: same region free; another region of the same cloud; another cloud
#: (internet egress). List prices of AWS and GCP's first tier, rounded.
EGRESS_SAME_CLOUD_USD_PER_GIB = 0.02
EGRESS_CROSS_CLOUD_USD_PER_GIB = 0.09


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
    #: What choosing ``offer`` adds to the bill (ranking only): ``expected_cost``, except
    #: 0 on an idle reservation (paid whether used or not). ``None``: equal to it.
    marginal_cost: float | None = None
    #: The offer first chosen when this one ran instead (it could not start, or admission
    #: refused it): the report explains a dearer row by it.
    fell_back_from: str | None = None
    #: Tasks sharing this decision's instance (a packed ``.map()`` bin); 1 alone.
    shared_by: int = 1

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
                "data_region": self.needs.data_region,
                "input_gib": self.needs.input_gib,
            },
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "deadline_at_risk": self.deadline_at_risk,
            "marginal_cost": None if self.marginal_cost is None else round(self.marginal_cost, 6),
            "fell_back_from": self.fell_back_from,
            "shared_by": self.shared_by,
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


def spot_slack_needed(needs: TaskNeeds, change_over: timedelta) -> timedelta:
    """Time a spot attempt needs before the deadline: one lost try, the rerun, 2 change-overs."""
    lost = needs.est_runtime / 2 if needs.checkpointable else needs.est_runtime
    return needs.est_runtime + lost + 2 * change_over


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

    fits, allowed = _feasible_rows(needs, catalog, config, state, reasons)

    is_od = catalog.rows_with_option(PurchaseOption.ON_DEMAND)
    is_spot = catalog.rows_with_option(PurchaseOption.SPOT)
    is_res = catalog.rows_with_option(PurchaseOption.RESERVED)

    cost = catalog.a_price * hours
    probability = np.zeros(len(catalog))
    candidates = allowed & is_od
    spot_ok = _spot_allowed(needs, catalog, config, allowed & is_spot, deadline, now, reasons)
    if spot_ok is not None:
        hazard = _hazard(catalog, state)
        spot_cost, p = spot_expected_cost(
            catalog.a_price, catalog.a_od_price, hazard, hours, needs.checkpointable
        )
        cost = np.where(is_spot, spot_cost, cost)
        probability = np.where(is_spot, p, probability)
        candidates |= spot_ok

    reserved_idx = _idle_reserved(catalog, allowed & is_res, state)
    idle_reserved = np.zeros(len(catalog), dtype=bool)
    if reserved_idx is not None:
        idle_reserved[reserved_idx] = True
        candidates[reserved_idx] = True
    rank = marginal_cost(cost, idle_reserved)

    egress = None
    if needs.data_region and needs.input_gib > 0:
        egress = needs.input_gib * _egress_vector(catalog, needs.data_region)
        cost, rank = cost + egress, rank + egress

    if not candidates.any():
        if excluded := price_excluded(catalog, config, fits):
            reasons.append(
                f"max_usd_per_hour ${config.max_usd_per_hour:g}/h excludes {excluded}"
                " offer(s) that fit the needs"
            )
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
    order = ranked[np.lexsort((catalog.a_price[ranked], probability[ranked], rank[ranked]))]
    best = order[0]
    if config.reserved_first and reserved_idx is not None and reserved_idx.size:
        best = reserved_idx[0]
    chosen = catalog.offers[best]
    if idle_reserved[best]:
        reasons.append(
            f"idle reservation first: its commitment is paid whether used or not (marginal "
            f"${rank[best]:.4f}), charged at its amortised ${chosen.usd_per_hour:.4f}/h"
        )
    runner_up_idx = _runner_up(catalog, order, best)
    base_i, baseline_cost = _baseline(catalog, fits, allowed & is_od, hours, egress)

    return Decision(
        offer=chosen,
        expected_cost=float(cost[best]),
        baseline_offer=catalog.offers[base_i],
        baseline_cost=baseline_cost,
        interruption_probability=float(probability[best]),
        runner_up=None if runner_up_idx is None else catalog.offers[runner_up_idx],
        runner_up_cost=None if runner_up_idx is None else float(cost[runner_up_idx]),
        reasons=tuple(reasons),
        needs=needs,
        decided_at=now,
        deadline=deadline,
        deadline_at_risk=at_risk,
        marginal_cost=float(rank[best]),
    )


def _feasible_rows(
    needs: TaskNeeds,
    catalog: Catalog,
    config: PolicyConfig,
    state: PlacementState | None,
    reasons: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """(rows that fit the needs, those the policy allows and no error has blocked).

    Raises:
        NoFeasibleOffer: no shape fits, or the policy's clouds, regions or GPU models
            rule out every one that does.
    """
    fits = shape_fits(needs, catalog)
    if not fits.any():
        raise explain_nothing_fits(needs, catalog)
    allowed = fits & policy_allows(catalog, config)
    if not allowed.any() and (error := explain_nothing_allowed(needs, catalog, config, fits)):
        raise error
    if state is not None and state.blocked:
        blocked = np.zeros(len(catalog), dtype=bool)
        blocked[catalog.rows_of(list(state.blocked))] = True
        if (allowed & blocked).any():
            reasons.append(f"{int((allowed & blocked).sum())} offer(s) blocked after errors")
        allowed &= ~blocked
    return fits, allowed


def _spot_allowed(
    needs: TaskNeeds,
    catalog: Catalog,
    config: PolicyConfig,
    spot_rows: np.ndarray,
    deadline: datetime | None,
    now: datetime,
    reasons: list[str],
) -> np.ndarray | None:
    """The spot rows the task may use, or ``None`` (the reason why not added to ``reasons``)."""
    if not needs.allows_spot:
        if needs.spot_ok:
            reasons.append("spot excluded: realtime priority")
        return None
    if config.max_spot_band is not None:
        spot_rows = spot_rows & within_spot_band(catalog, config.max_spot_band)
    slack_needed = spot_slack_needed(needs, config.change_over)
    if deadline is not None and deadline - now < slack_needed:
        reasons.append(
            f"spot excluded: {_fmt(deadline - now)} to the deadline < {_fmt(slack_needed)}"
            " needed to absorb an interruption"
        )
        return None
    return spot_rows if spot_rows.any() else None


def _hazard(catalog: Catalog, state: PlacementState | None) -> np.ndarray:
    """Spot hazard per row, raised in proportion to the interruptions seen this run."""
    if state is None or not state.interruptions:
        return catalog.a_hazard
    bump = np.ones(len(catalog))
    for capacity_key, count in state.interruptions.items():
        bump[catalog.rows_of_capacity([capacity_key])] += count
    return catalog.a_hazard * bump


def _runner_up(catalog: Catalog, order: np.ndarray, best: int) -> int | None:
    """The best-ranked row that is another capacity or another purchase option."""
    capacity, option = catalog.a_capacity_key[best], catalog.a_option[best]
    for i in order:
        if catalog.a_capacity_key[i] != capacity or catalog.a_option[i] != option:
            return int(i)
    return None


def _baseline(
    catalog: Catalog,
    fits: np.ndarray,
    allowed_on_demand: np.ndarray,
    hours: float,
    egress: np.ndarray | None,
) -> tuple[int, float]:
    """The cheapest on-demand placement (allowed if any, else any fitting): what we compare to."""
    od_allowed = np.flatnonzero(allowed_on_demand)
    is_od = catalog.rows_with_option(PurchaseOption.ON_DEMAND)
    pool = od_allowed if od_allowed.size else np.flatnonzero(fits & is_od)
    baseline_price = catalog.a_price
    if not pool.size:  # a catalog without on-demand rows: price the fitting shapes at list
        pool, baseline_price = np.flatnonzero(fits), catalog.a_od_price
    baseline_costs = baseline_price[pool] * hours
    if egress is not None:
        baseline_costs = baseline_costs + egress[pool]
    cheapest = int(np.argmin(baseline_costs))
    return int(pool[cheapest]), float(baseline_costs[cheapest])


def _idle_reserved(
    catalog: Catalog, mask: np.ndarray, state: PlacementState | None
) -> np.ndarray | None:
    if state is None or not state.reserved_free or not mask.any():
        return None
    free = [k for k, n in state.reserved_free.items() if n > 0]
    rows = catalog.rows_of_capacity(free)
    hits = rows[mask[rows]]
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
    """What ``runtime_seconds`` on a whole ``offer`` is charged (:func:`charge_usd`)."""
    return charge_usd(offer, runtime_seconds)
