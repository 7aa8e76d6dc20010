"""Pack queued tasks onto few instances when sharing one is cheaper than one each.

Four 1-GPU tasks fit one 4-GPU instance; when it costs less than four 1-GPU instances the
packer says so. Pure: the task runner (not this module) decides when to call it.

Layout (as in the capacity plan): candidates, then the model, then the solve, then the
explanation.

1. **Classes.** Tasks with the same shape (GPUs, GPU model, vCPUs, memory), the same
   permission to use spot (``allows_spot`` *and* enough slack before the deadline to absorb
   one interruption: :func:`~prefect_cloudsched.core.policy.placement.spot_slack_needed`), the
   same checkpointing, the same input location and a similar run time (geometric buckets,
   ×1.25) form one class. 500 queued tasks are typically tens of classes.
2. **Offers.** Per GPU model, GPU count, purchase option (and region when some task pays
   egress) only the Pareto-optimal offers on price, interruption hazard, vCPUs and memory:
   for any task shape the cheapest fitting offer is among them. Idle reserved instances
   (``reserved_free``) come in at zero *marginal* cost, capped at their count.
3. **Patterns.** For each offer, the fillings worth considering: as many copies of one class
   as fit, and greedy mixes (``a`` copies of a class, then the longest-running compatible
   classes in the space left). An instance lives as long as its longest task, so a pattern
   costs the offer's (expected) price over that time, plus egress.
4. **Program.** Integer ``z[p]`` instances of each pattern, minimum marginal cost, every
   class covered, reserved patterns within the idle count. Patterns are expanded into
   instances and tasks assigned longest first; each instance's cost is then recomputed from
   its real tasks.

Money follows :mod:`prefect_cloudsched.core.accounting`, as in ``decide()`` and the ledger: a
bin's ``cost`` is what its rows will be charged (a reservation at its amortised rate); only
the program's objective ranks an idle reservation at its marginal 0. The result carries the
cost of placing every task alone with ``decide()``; unless packing saves at least
``PolicyConfig.pack_min_saving_pct`` of it and ``pack_min_saving_usd``, the alone placements
are returned (status ``alone``).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from prefect_cloudsched.core.accounting import expected_usd, marginal_cost, spot_expected_cost
from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.planning.solver import make_solver
from prefect_cloudsched.core.policy.offer_filter import in_set, policy_allows, spot_within_band
from prefect_cloudsched.core.policy.placement import (
    DEFAULT_POLICY,
    Decision,
    PlacementState,
    PolicyConfig,
    decide,
    egress_usd_per_gib,
    spot_slack_needed,
)
from prefect_cloudsched.errors import InputError, NoFeasibleOffer

#: Run times within a factor 1.25 share a class (priced at the class's longest).
RUNTIME_BUCKET_RATIO = 1.25
#: Greedy mixed patterns kept per offer; homogeneous patterns are always kept.
MAX_MIXED_PATTERNS_PER_OFFER = 400
#: A reserved instance is free at the margin; this tie-break keeps the count of them low.
_RESERVED_TIE_BREAK_PER_HOUR = 1e-6


@dataclass(frozen=True, slots=True)
class PackTask:
    """One queued task.

    Attributes:
        task_id: Identifier the caller uses (a task run id).
        needs: What it asks for.
        submitted_at: When it was submitted (relative deadlines count from here; default
            ``now``).
    """

    task_id: str
    needs: TaskNeeds
    submitted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PackedBin:
    """One instance and the tasks it runs side by side.

    Attributes:
        offer: What to start (or which idle reserved instance to use).
        task_ids: Tasks placed on it.
        hours: How long it lives: its longest task.
        cost: Expected USD its rows will be charged (spot with interruption overhead,
            reserved at its amortised rate, plus egress).
    """

    offer: Offer
    task_ids: tuple[str, ...]
    hours: float
    cost: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "offer": self.offer.key,
            "task_ids": list(self.task_ids),
            "hours": round(self.hours, 6),
            "cost": round(self.cost, 6),
        }


@dataclass
class PackingResult:
    """Instances to start and which tasks run on each, with the comparison to ``decide()``.

    Attributes:
        status: ``optimal``, ``feasible`` (time limit), ``alone`` (packing would not save
            the policy's threshold over one instance per task) or ``empty``.
        bins: Instances and their tasks.
        cost: Expected USD of the bins.
        alone_cost: Expected USD of placing each task by itself with ``decide()``.
        alone: The ``decide()`` decision of every placeable task.
        unplaced: Tasks no offer can run, with the reason.
        solve_seconds: Wall time of the whole packing.
        classes: Task classes the program saw.
        patterns: Patterns (columns) the program saw.
        packed_cost: Expected USD of the best packing found, even when ``alone`` won
            (``None``: the program found none).
        reason: One line: why the tasks share instances, or why each runs alone (for logs).
    """

    status: str
    bins: list[PackedBin]
    cost: float
    alone_cost: float
    alone: dict[str, Decision]
    unplaced: dict[str, str] = field(default_factory=dict)
    solve_seconds: float = 0.0
    classes: int = 0
    patterns: int = 0
    packed_cost: float | None = None
    reason: str = ""

    @property
    def saving(self) -> float:
        """USD saved against one instance per task."""
        return self.alone_cost - self.cost

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "status": self.status,
            "cost": round(self.cost, 6),
            "alone_cost": round(self.alone_cost, 6),
            "saving": round(self.saving, 6),
            "bins": [b.to_dict() for b in self.bins],
            "unplaced": dict(self.unplaced),
            "solve_seconds": round(self.solve_seconds, 3),
            "classes": self.classes,
            "patterns": self.patterns,
            "packed_cost": None if self.packed_cost is None else round(self.packed_cost, 6),
            "reason": self.reason,
        }


# --------------------------------------------------------------------------- classes
@dataclass
class _Class:
    needs: TaskNeeds
    spot_ok: bool
    hours: float = 0.0
    members: list[tuple[float, str]] = field(default_factory=list)


def _bucket(hours: float) -> int:
    return math.ceil(math.log(max(hours * 60, 1.0)) / math.log(RUNTIME_BUCKET_RATIO))


def _classes(tasks: Sequence[PackTask], now: datetime, config: PolicyConfig) -> list[_Class]:
    groups: dict[tuple[Any, ...], _Class] = {}
    for task in tasks:
        needs = task.needs
        hours = needs.est_runtime.total_seconds() / 3600
        deadline = needs.deadline_at(task.submitted_at or now)
        spot_ok = needs.allows_spot and (
            deadline is None or deadline - now >= spot_slack_needed(needs, config.change_over)
        )
        key = (
            needs.gpus,
            needs.gpu_type,
            needs.cpus,
            needs.memory_gib,
            spot_ok,
            needs.checkpointable,
            needs.data_region if needs.input_gib > 0 else None,
            needs.input_gib if needs.data_region else 0.0,
            _bucket(hours),
        )
        group = groups.setdefault(key, _Class(needs, spot_ok))
        group.members.append((hours, task.task_id))
        group.hours = max(group.hours, hours)
    for group in groups.values():
        group.members.sort(reverse=True)
    return sorted(groups.values(), key=lambda g: -g.hours)


# --------------------------------------------------------------------------- offers
def _offers(
    catalog: Catalog,
    classes: Sequence[_Class],
    reserved_free: Mapping[str, int],
    config: PolicyConfig,
) -> list[Offer]:
    """Pareto-optimal offers per (GPU model, GPU count, option[, region])."""
    mask = np.zeros(len(catalog), dtype=bool)
    gpu_types = {c.needs.gpu_type for c in classes if c.needs.gpus}
    if any(c.needs.gpus == 0 for c in classes):
        mask |= catalog.a_gpus == 0
    if None in gpu_types:
        mask |= catalog.a_gpus > 0
    for gpu in gpu_types - {None}:
        mask |= catalog.a_gpu_type == catalog.gpu_code(gpu)
    mask &= policy_allows(catalog, config)
    spot_code = catalog.option_code(PurchaseOption.SPOT)
    res_code = catalog.option_code(PurchaseOption.RESERVED)
    if not any(c.spot_ok for c in classes):
        mask &= catalog.a_option != spot_code
    else:
        mask &= spot_within_band(catalog, config.max_spot_band)
    free = [k for k, n in reserved_free.items() if n > 0]
    is_res = catalog.a_option == res_code
    mask &= ~is_res | in_set(catalog.a_capacity_key, free)
    egress = any(c.needs.data_region and c.needs.input_gib > 0 for c in classes)
    hourly, _ = spot_expected_cost(
        catalog.a_price, catalog.a_od_price, catalog.a_hazard, 1.0, False
    )
    hourly = np.where(catalog.a_option == spot_code, hourly, catalog.a_price)

    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i in np.flatnonzero(mask):
        o = catalog.offers[i]
        place = o.capacity_key if o.option is PurchaseOption.RESERVED else None
        groups[(o.gpu_type, o.gpu_count, o.option, o.region if egress else None, place)].append(i)
    kept: list[Offer] = []
    for members in groups.values():
        members.sort(key=lambda i: (hourly[i], catalog.a_hazard[i], -catalog.a_vcpus[i]))
        frontier: list[int] = []
        for i in members:
            dominated = any(
                catalog.a_hazard[j] <= catalog.a_hazard[i]
                and catalog.a_vcpus[j] >= catalog.a_vcpus[i]
                and catalog.a_mem[j] >= catalog.a_mem[i]
                for j in frontier
            )
            if not dominated:
                frontier.append(i)
        kept.extend(catalog.offers[i] for i in frontier)
    return kept


# --------------------------------------------------------------------------- patterns
def _fits_one(cls: _Class, offer: Offer) -> bool:
    needs = cls.needs
    if offer.option is PurchaseOption.SPOT and not cls.spot_ok:
        return False
    if needs.gpus:
        if offer.gpu_count < needs.gpus:
            return False
        if needs.gpu_type is not None and offer.gpu_type != needs.gpu_type:
            return False
    elif offer.gpu_count:
        return False
    return offer.vcpus >= needs.cpus and offer.memory_gib >= needs.memory_gib


def _fill(
    offer: Offer, counts: dict[int, int], order: Sequence[int], classes: Sequence[_Class]
) -> dict[int, int]:
    left = np.array([offer.gpu_count, offer.vcpus, offer.memory_gib], dtype=float) - sum(
        (_shape(classes[c]) * n for c, n in counts.items()), np.zeros(3)
    )
    filled = dict(counts)
    for c in order:
        shape = _shape(classes[c])
        fit = _max_copies(left, shape)
        if fit:
            filled[c] = filled.get(c, 0) + fit
            left = left - shape * fit
    return filled


def _shape(cls: _Class) -> np.ndarray:
    return np.array([cls.needs.gpus, cls.needs.cpus, cls.needs.memory_gib], dtype=float)


def _max_copies(space: np.ndarray, shape: np.ndarray) -> int:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(shape > 0, np.floor(space / np.where(shape > 0, shape, 1) + 1e-9), np.inf)
    return int(max(0, ratios.min()))


def _patterns(offer: Offer, classes: Sequence[_Class]) -> list[dict[int, int]]:
    compatible = [c for c, cls in enumerate(classes) if _fits_one(cls, offer)]
    capacity = np.array([offer.gpu_count, offer.vcpus, offer.memory_gib], dtype=float)
    found: dict[tuple[tuple[int, int], ...], dict[int, int]] = {}
    for c in compatible:
        top = min(_max_copies(capacity, _shape(classes[c])), len(classes[c].members))
        found[((c, top),)] = {c: top}
    mixed = 0
    for c in compatible:
        top = min(_max_copies(capacity, _shape(classes[c])), len(classes[c].members))
        later = [d for d in compatible if d != c and classes[d].hours <= classes[c].hours]
        for a in range(top, 0, -1):
            pattern = _fill(offer, {c: a}, later, classes)
            key = tuple(sorted(pattern.items()))
            if len(pattern) > 1 and key not in found:
                found[key] = pattern
                mixed += 1
            if mixed >= MAX_MIXED_PATTERNS_PER_OFFER:
                return list(found.values())
    return list(found.values())


def _egress(offer: Offer, needs: Sequence[TaskNeeds], catalog: Catalog) -> float:
    return sum(
        n.input_gib
        * egress_usd_per_gib(
            offer.region, offer.cloud, n.data_region, catalog.cloud_of_region(n.data_region)
        )
        for n in needs
        if n.data_region and n.input_gib > 0
    )


def _bin_cost(offer: Offer, hours: float, needs: Sequence[TaskNeeds], catalog: Catalog) -> float:
    """Expected USD one instance running ``needs`` side by side for ``hours`` is charged."""
    checkpointable = all(n.checkpointable for n in needs)
    return expected_usd(offer, hours, checkpointable=checkpointable) + _egress(
        offer, needs, catalog
    )


def _bin_marginal(
    offer: Offer, hours: float, needs: Sequence[TaskNeeds], catalog: Catalog
) -> float:
    """What the bin adds to the bill (the program's objective): an idle reservation 0."""
    accounted = expected_usd(offer, hours, checkpointable=all(n.checkpointable for n in needs))
    idle_reserved = offer.option is PurchaseOption.RESERVED
    rank = float(marginal_cost(accounted, idle_reserved)) + _egress(offer, needs, catalog)
    return rank + (_RESERVED_TIE_BREAK_PER_HOUR * hours if idle_reserved else 0.0)


# --------------------------------------------------------------------------- public API
def pack_tasks(
    tasks: Sequence[PackTask],
    catalog: Catalog,
    *,
    reserved_free: Mapping[str, int] | None = None,
    now: datetime | None = None,
    config: PolicyConfig = DEFAULT_POLICY,
    time_limit_s: float = 5,
    gap: float = 0.01,
    solver: str = "cbc",
) -> PackingResult:
    """Place queued tasks on as few, as cheap instances as their needs and deadlines allow.

    Args:
        tasks: The queue.
        catalog: Offers.
        reserved_free: Idle reserved instances per ``Offer.capacity_key``; used first, at
            zero marginal cost.
        now: Current (possibly simulated) time; deadlines are measured from it.
        config: Policy knobs (allowed clouds/regions/GPU models, worst spot band, price cap).
        time_limit_s: Solver time limit.
        gap: Relative optimality gap.
        solver: ``cbc`` or ``highs``.

    Returns:
        Instances and their tasks, with the cost of placing each task alone for comparison.

    Raises:
        InputError: duplicate task ids or a bad option.
    """
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    free = {k: int(n) for k, n in (reserved_free or {}).items() if n > 0}
    if len({t.task_id for t in tasks}) != len(tasks):
        raise InputError("task ids must be unique within one packing call")
    if time_limit_s <= 0 or not 0 <= gap < 1:
        raise InputError("time_limit_s must be > 0 and gap in [0, 1)")

    alone, alone_bins, unplaced = _place_alone(tasks, catalog, free, now, config)
    placeable = [t for t in tasks if t.task_id in alone]
    alone_cost = sum(b.cost for b in alone_bins)
    if not placeable:
        return PackingResult("empty", [], 0.0, 0.0, alone, unplaced, time.perf_counter() - started)

    classes = _classes(placeable, now, config)
    columns = _columns(_offers(catalog, classes, free, config), classes, catalog)
    status, counts = _solve(columns, classes, free, make_solver(solver, time_limit_s, gap))
    bins = _assign(columns, counts, classes, catalog) if status != "infeasible" else []
    cost = sum(b.cost for b in bins)
    packed_cost = None if status == "infeasible" else cost
    shares = any(len(b.task_ids) > 1 for b in bins)
    reason = _verdict(status, shares, cost, alone_cost, config)
    if not (shares and config.packing_pays(alone_cost - cost, alone_cost)):
        status, bins, cost = "alone", alone_bins, alone_cost
    return PackingResult(
        status=status,
        bins=bins,
        cost=cost,
        alone_cost=alone_cost,
        alone=alone,
        unplaced=unplaced,
        solve_seconds=time.perf_counter() - started,
        classes=len(classes),
        patterns=len(columns),
        packed_cost=packed_cost,
        reason=reason,
    )


def _verdict(
    status: str, shares: bool, cost: float, alone_cost: float, config: PolicyConfig
) -> str:
    """One line for the log: why the tasks share instances or each runs alone."""
    if status == "infeasible":
        return "each alone: the packing program found no solution"
    if not shares:
        return "each alone: no instance is cheaper shared than one per task"
    saving = alone_cost - cost
    pct = 100 * saving / alone_cost if alone_cost > 0 else 0.0
    verdict = "shared" if config.packing_pays(saving, alone_cost) else "each alone"
    return (
        f"{verdict}: sharing would cost ${cost:.4f} vs ${alone_cost:.4f} one instance each, "
        f"saving ${saving:.4f} ({pct:.1f} %); the policy asks for >= "
        f"{config.pack_min_saving_pct:g} % and >= ${config.pack_min_saving_usd:g}"
    )


def _columns(
    offers: Sequence[Offer], classes: Sequence[_Class], catalog: Catalog
) -> list[tuple[Offer, dict[int, int], float]]:
    """Every (offer, pattern, marginal cost) the program may buy instances of."""
    columns: list[tuple[Offer, dict[int, int], float]] = []
    for offer in offers:
        for pattern in _patterns(offer, classes):
            hours = max(classes[c].hours for c in pattern)
            needs = [classes[c].needs for c, n in pattern.items() for _ in range(n)]
            columns.append((offer, pattern, _bin_marginal(offer, hours, needs, catalog)))
    return columns


def _solve(
    columns: Sequence[tuple[Offer, dict[int, int], float]],
    classes: Sequence[_Class],
    free: Mapping[str, int],
    solver: Any,
) -> tuple[str, list[int]]:
    """Instances per column at minimum cost, every class covered, reserved within the idle."""
    import pulp

    prob = pulp.LpProblem("packing", pulp.LpMinimize)
    variables = []
    covers: dict[int, list[Any]] = defaultdict(list)
    reserved_use: dict[str, list[Any]] = defaultdict(list)
    for n, (offer, pattern, _cost) in enumerate(columns):
        bound = max(math.ceil(len(classes[c].members) / k) for c, k in pattern.items())
        var = pulp.LpVariable(f"z{n}", 0, bound, cat="Integer")
        variables.append(var)
        for c, k in pattern.items():
            covers[c].append(k * var)
        if offer.option is PurchaseOption.RESERVED:
            reserved_use[offer.capacity_key].append(var)
    for c, cls in enumerate(classes):
        prob += pulp.lpSum(covers[c]) >= len(cls.members)
    for key, terms in reserved_use.items():
        prob += pulp.lpSum(terms) <= free[key]
    prob += pulp.lpSum(cost * var for (_, _, cost), var in zip(columns, variables, strict=True))
    prob.solve(solver)
    status = {1: "optimal", 2: "feasible"}.get(prob.sol_status, "infeasible")
    return status, [round(v.value() or 0) for v in variables]


def _place_alone(
    tasks: Sequence[PackTask],
    catalog: Catalog,
    free: Mapping[str, int],
    now: datetime,
    config: PolicyConfig,
) -> tuple[dict[str, Decision], list[PackedBin], dict[str, str]]:
    """What the runner does today: ``decide()`` per task, claiming reserved as it goes."""
    state = PlacementState(reserved_free=dict(free))
    decisions: dict[str, Decision] = {}
    bins: list[PackedBin] = []
    unplaced: dict[str, str] = {}
    for task in tasks:
        try:
            decision = decide(
                task.needs,
                catalog,
                now=now,
                submitted_at=task.submitted_at or now,
                state=state,
                config=config,
            )
        except NoFeasibleOffer as err:
            unplaced[task.task_id] = str(err)
            continue
        if decision.offer.option is PurchaseOption.RESERVED:
            state.take_reserved(decision.offer.capacity_key)
        decisions[task.task_id] = decision
        hours = task.needs.est_runtime.total_seconds() / 3600
        bins.append(PackedBin(decision.offer, (task.task_id,), hours, decision.expected_cost))
    return decisions, bins, unplaced


def _assign(
    columns: Sequence[tuple[Offer, dict[int, int], float]],
    counts: Sequence[int],
    classes: Sequence[_Class],
    catalog: Catalog,
) -> list[PackedBin]:
    """Instances from pattern counts; longest tasks go to the longest-lived patterns first."""
    queues = {c: list(cls.members) for c, cls in enumerate(classes)}
    order = sorted(
        (i for i, n in enumerate(counts) if n),
        key=lambda i: -max(classes[c].hours for c in columns[i][1]),
    )
    bins: list[PackedBin] = []
    for i in order:
        offer, pattern, _ = columns[i]
        for _ in range(counts[i]):
            placed: list[tuple[float, str, TaskNeeds]] = []
            for c, k in pattern.items():
                for _ in range(min(k, len(queues[c]))):
                    hours, task_id = queues[c].pop(0)
                    placed.append((hours, task_id, classes[c].needs))
            if not placed:
                continue
            hours = max(h for h, _, _ in placed)
            cost = _bin_cost(offer, hours, [n for _, _, n in placed], catalog)
            bins.append(PackedBin(offer, tuple(t for _, t, _ in placed), hours, cost))
    return bins


__all__ = [
    "PackTask",
    "PackedBin",
    "PackingResult",
    "pack_tasks",
]
