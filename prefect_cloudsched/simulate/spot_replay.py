"""Replay one checkpointable job on a spot availability trace, the way *Can't Be Late* does.

Accounting (Wu et al., NSDI'24, and their trace simulator, re-implemented from the paper):
at the start of each tick a spot job whose zone is down is preempted (idle); the policy sees
the job and the zones that are up now and picks idle, spot in an up zone, or on-demand;
entering a non-idle state sets the remaining change-over to ``d``; a non-idle tick pays
``g · price`` and adds ``max(0, g − remaining change-over)`` progress, except the tick in
which the work completes: it pays only until then (the instance is released when the job is
done and clouds bill per second, :mod:`prefect_cloudsched.core.accounting`; the paper bills
the whole tick). A job still short of its work at the deadline is a **miss**. Moving to a
zone of another region than the checkpoint's pays ``egress_usd`` once.

Policies here: :class:`Greedy` and :class:`UniformProgress` (the paper's two baselines,
from its description) and :class:`Controlled` (the project's
:class:`~prefect_cloudsched.core.policy.spot_control.SpotController`, the same object the
task runner drives). :mod:`.spot_bound` gives the omniscient lower bound.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from prefect_cloudsched.core.policy.spot_control import (
    IDLE,
    AvailabilityModel,
    JobStatus,
    Kind,
    Market,
    Placement,
    SpotController,
)
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.simulate.spot import zone_region

EPS = 1e-6


@dataclass(frozen=True)
class SpotMarket:
    """Availability (zones × ticks, True = up) and prices of a set of zones."""

    zones: tuple[str, ...]
    gap_s: float
    up: np.ndarray
    spot_usd_per_hour: tuple[float, ...]
    on_demand_usd_per_hour: float
    name: str = ""

    @property
    def ticks(self) -> int:
        """Number of ticks in the trace."""
        return int(self.up.shape[1])

    def region_of(self, zone: str) -> str:
        """The region holding ``zone``."""
        return zone_region(zone)

    def only(self, zones: Sequence[str]) -> SpotMarket:
        """The same market restricted to ``zones`` (order kept)."""
        rows = [self.zones.index(z) for z in zones]
        return SpotMarket(
            tuple(zones),
            self.gap_s,
            self.up[rows],
            tuple(self.spot_usd_per_hour[r] for r in rows),
            self.on_demand_usd_per_hour,
            self.name,
        )

    def regions(self) -> dict[str, list[str]]:
        """Region → its zones, in trace order."""
        found: dict[str, list[str]] = {}
        for zone in self.zones:
            found.setdefault(self.region_of(zone), []).append(zone)
        return found

    def markets(self) -> list[Market]:
        """The controller's view of the zones."""
        return [
            Market(z, self.region_of(z), p, self.on_demand_usd_per_hour)
            for z, p in zip(self.zones, self.spot_usd_per_hour, strict=True)
        ]


def load_market(
    path: str | Path,
    *,
    on_demand_usd_per_hour: float,
    spot_usd_per_hour: dict[str, float] | float,
    column_suffix: str = "",
) -> SpotMarket:
    """Read ``timestamp_utc,<zone>[<suffix>],...`` (1 = available) into a market.

    Args:
        path: The trace CSV.
        on_demand_usd_per_hour: On-demand list price (all zones).
        spot_usd_per_hour: Per-zone spot price, or one price for every zone.
        column_suffix: Keep only columns ending with it (``_v100_1``), stripped from the zone.

    Raises:
        InputError: unreadable file, no matching column, uneven ticks, a value not 0/1.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"spot trace {file} does not exist")
    with file.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 3 or rows[0][0] != "timestamp_utc":
        raise InputError(f"spot trace {file}: expected 'timestamp_utc,<zone>,...' and 2+ ticks")
    columns = [i for i, c in enumerate(rows[0]) if i and c.endswith(column_suffix)]
    if not columns:
        raise InputError(f"spot trace {file}: no column ends with {column_suffix!r}")
    zones = tuple(rows[0][i].removesuffix(column_suffix) for i in columns)
    try:
        stamps = np.array([datetime.fromisoformat(r[0].replace("Z", "+00:00")).timestamp()
                           for r in rows[1:]])  # fmt: skip
        up = np.array([[int(r[i]) > 0 for r in rows[1:]] for i in columns], dtype=bool)
    except (ValueError, IndexError):
        raise InputError(f"spot trace {file}: a bad timestamp or a value that is not 0/1") from None
    gap = float(np.median(np.diff(stamps)))
    if isinstance(spot_usd_per_hour, dict):
        missing = [z for z in zones if z not in spot_usd_per_hour]
        if missing:
            raise InputError(f"spot_usd_per_hour: no price for zone(s) {', '.join(missing)}")
        prices = tuple(spot_usd_per_hour[z] for z in zones)
    else:
        prices = (float(spot_usd_per_hour),) * len(zones)
    return SpotMarket(zones, gap, up, prices, on_demand_usd_per_hour, file.name)


def mean_spot_prices(path: str | Path, end_utc: str) -> dict[str, float]:
    """Time-weighted mean spot price per zone from a change-point file (``zone, ..., price``)."""
    changes: dict[str, list[tuple[float, float]]] = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            when = datetime.fromisoformat(row["effective_from_utc"].replace("Z", "+00:00"))
            changes.setdefault(row["zone"], []).append(
                (when.timestamp(), float(row["spot_usd_per_hour"]))
            )
    end = datetime.fromisoformat(end_utc.replace("Z", "+00:00")).timestamp()
    means: dict[str, float] = {}
    for zone, points in changes.items():
        points.sort()
        total = sum(
            p * (nxt[0] - t) for (t, p), nxt in zip(points, [*points[1:], (end, 0.0)], strict=True)
        )
        means[zone] = round(total / (end - points[0][0]), 4)
    return means


@dataclass(frozen=True)
class SpotJob:
    """One job: ``work_s`` of compute from tick ``start_tick``, due ``deadline_s`` later."""

    start_tick: int
    work_s: float
    deadline_s: float
    change_over_s: float
    egress_usd: float = 0.0


@dataclass
class View:
    """What a policy sees at a tick (times relative to the job's start)."""

    t: float
    tick: int
    done_s: float
    placement: Placement
    up_now: dict[str, bool]
    checkpoint_region: str | None


class SpotPolicy(Protocol):
    """A single-job policy: where to be during the coming tick."""

    name: str

    def start(self, market: SpotMarket, job: SpotJob) -> None: ...
    def act(self, view: View) -> Placement: ...


@dataclass
class ReplayResult:
    """One job under one policy."""

    cost_usd: float
    missed: bool
    finish_s: float
    spot_starts: int = 0
    on_demand_starts: int = 0
    interruptions: int = 0
    moves: int = 0
    spot_hours: float = 0.0
    on_demand_hours: float = 0.0
    placements: list[Placement] = field(default_factory=list, repr=False)


def replay(policy: SpotPolicy, market: SpotMarket, job: SpotJob, *, record: bool = False)\
        -> ReplayResult:  # fmt: skip
    """Run one job tick by tick (see the module docstring for the accounting)."""
    g = market.gap_s
    n_ticks = deadline_ticks(market, job)
    if job.start_tick + n_ticks > market.ticks:
        raise InputError(
            f"start_tick {job.start_tick}: the trace ends before the deadline; start earlier"
        )
    policy.start(market, job)
    index = {z: i for i, z in enumerate(market.zones)}
    here, delay, done, cost = IDLE, 0.0, 0.0, 0.0
    checkpoint_region: str | None = None
    result = ReplayResult(0.0, True, math.inf)
    for step in range(n_ticks):
        tick = job.start_tick + step
        column = market.up[:, tick]
        if here.kind is Kind.SPOT and not column[index[here.zone]]:
            here = IDLE
            result.interruptions += 1
        up_now = {z: bool(column[i]) for z, i in index.items()}
        view = View(step * g, tick, done, here, up_now, checkpoint_region)
        chosen = policy.act(view)
        if chosen.kind is Kind.STAY:
            chosen = here
        if chosen.kind is Kind.SPOT and not up_now.get(chosen.zone or "", False):
            raise RuntimeError(f"policy {policy.name} chose spot in {chosen.zone} while down")
        if chosen != here and chosen.kind is not Kind.WAIT:
            delay = job.change_over_s
            region = chosen.region or market.region_of(chosen.zone or "")
            if checkpoint_region is not None and region != checkpoint_region:
                cost += job.egress_usd
                result.moves += 1
            checkpoint_region = region
            if chosen.kind is Kind.SPOT:
                result.spot_starts += 1
            else:
                result.on_demand_starts += 1
        here = chosen
        if record:
            result.placements.append(here)
        if here.kind is Kind.WAIT:
            continue
        # the tick in which the work completes bills only until then: the instance is
        # released when the job is done, and clouds bill per second (core/accounting.py)
        used = min(g, delay + max(0.0, job.work_s - done))
        if here.kind is Kind.SPOT:
            cost += used * market.spot_usd_per_hour[index[here.zone]] / 3600
            result.spot_hours += used / 3600
        else:
            cost += used * market.on_demand_usd_per_hour / 3600
            result.on_demand_hours += used / 3600
        done += max(0.0, used - delay)
        delay = max(0.0, delay - g)
        if done >= job.work_s - EPS:
            result.missed, result.finish_s = False, step * g + used
            break
    result.cost_usd = cost
    return result


def deadline_ticks(market: SpotMarket, job: SpotJob) -> int:
    """Whole ticks before the deadline: the replay's deadline is the last tick boundary."""
    return math.floor(job.deadline_s / market.gap_s + EPS)


def _place(market: SpotMarket, kind: Kind, zone: str | None = None) -> Placement:
    region = market.region_of(zone) if zone else market.region_of(market.zones[0])
    return Placement(kind, zone, region)


class _Baseline:
    """Shared parts of the paper's baselines: the sticky safety net and first-up zone."""

    name = "baseline"

    def start(self, market: SpotMarket, job: SpotJob) -> None:
        """Reset per job."""
        self.market, self.job, self.committed = market, job, False
        self.deadline_s = deadline_ticks(market, job) * market.gap_s

    def _first_up(self, view: View) -> str | None:
        return next((z for z in self.market.zones if view.up_now[z]), None)

    def _must_commit(self, view: View) -> bool:
        """Idle and ``R(t) < C(t) + 2d`` (+ one tick, the trace's resolution) → on-demand."""
        left = self.deadline_s - view.t
        need = self.job.work_s - view.done_s + 2 * self.job.change_over_s + self.market.gap_s
        self.committed = self.committed or (view.placement.kind is not Kind.SPOT and left < need)
        return self.committed

    def _on_demand(self, view: View) -> Placement:
        if view.placement.kind is Kind.ON_DEMAND:
            return view.placement
        return _place(self.market, Kind.ON_DEMAND)


class Greedy(_Baseline):
    """Spot whenever available, else idle; the safety net (Wu et al., §3)."""

    name = "greedy"

    def act(self, view: View) -> Placement:
        """See the class docstring."""
        if self._must_commit(view):
            return self._on_demand(view)
        if view.placement.kind is Kind.SPOT:
            return view.placement
        zone = self._first_up(view)
        return _place(self.market, Kind.SPOT, zone) if zone else IDLE


class UniformProgress(_Baseline):
    """Uniform Progress (Wu et al., §4), from the paper's description.

    ``ep(t) = t·C/R``. (a) idle and behind → on-demand; (b) take spot whenever available,
    even while behind; (c) on on-demand stay until ``cp(t) ≥ ep(t + 2d)``; (d) safety net.
    """

    name = "uniform-progress"

    def _expected(self, t: float) -> float:
        return t * self.job.work_s / self.deadline_s

    def act(self, view: View) -> Placement:
        """See the class docstring."""
        if self._must_commit(view):
            return self._on_demand(view)
        here = view.placement
        if here.kind is Kind.SPOT:
            return here
        if here.kind is Kind.ON_DEMAND and view.done_s < self._expected(
            view.t + 2 * self.job.change_over_s
        ):
            return here
        zone = self._first_up(view)
        if zone is not None:
            return _place(self.market, Kind.SPOT, zone)
        if view.done_s < self._expected(view.t):
            return self._on_demand(view)
        return IDLE


class Controlled:
    """The project's :class:`SpotController`, fed the trace's past before the job starts.

    Args:
        history_s: How much of the trace before the job's start the controller has seen
            (a deployed runner keeps observing the market between jobs).
        late_s: The controller's margin for a late decision. 0 by default: the replay
            decides exactly on every tick; the runner keeps its instance-check period plus
            the time an attempt takes to end (``SpotLive.late_s``), which the benches
            replay as a share of a tick (``None``: a whole tick).
    """

    name = "controller"

    def __init__(self, history_s: float = 7 * 86400.0, late_s: float | None = 0.0) -> None:
        self.history_s = history_s
        self.late_s = late_s

    def start(self, market: SpotMarket, job: SpotJob) -> None:
        """Build a controller and replay the market's past into its availability model."""
        model = AvailabilityModel()
        first = max(0, job.start_tick - int(self.history_s / market.gap_s))
        for row, zone in enumerate(market.zones):
            series = market.up[row, first : job.start_tick + 1]
            flips = np.flatnonzero(np.diff(series.astype(np.int8))) + 1
            for k in (0, *flips.tolist()):
                model.observe(zone, (first + k - job.start_tick) * market.gap_s, bool(series[k]))
        self.controller = SpotController(
            market.markets(),
            change_over_s=job.change_over_s,
            horizon_s=market.gap_s,
            late_s=self.late_s,
            egress_usd=job.egress_usd,
            model=model,
        )
        self.job = job
        self.deadline_s = deadline_ticks(market, job) * market.gap_s

    def act(self, view: View) -> Placement:
        """Observe the tick, then ask the controller."""
        for zone, up in view.up_now.items():
            self.controller.observe(zone, view.t, up)
        decision = self.controller.decide(
            JobStatus(
                now_s=view.t,
                work_s=self.job.work_s,
                done_s=view.done_s,
                deadline_s=self.deadline_s,
                start_s=0.0,
                placement=view.placement,
                checkpoint_region=view.checkpoint_region,
            )
        )
        if decision.kind is Kind.STAY:
            return view.placement
        if decision.kind is Kind.WAIT:
            return IDLE
        return Placement(decision.kind, decision.zone, decision.region)


SPOT_POLICIES = {p.name: p for p in (Greedy, UniformProgress, Controlled)}

__all__ = [
    "SPOT_POLICIES",
    "Controlled",
    "Greedy",
    "ReplayResult",
    "SpotJob",
    "SpotMarket",
    "SpotPolicy",
    "UniformProgress",
    "View",
    "load_market",
    "mean_spot_prices",
    "replay",
]
