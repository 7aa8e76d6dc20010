"""Deadline-aware spot control for one checkpointable job: spot, on-demand, wait or move.

The task runner and the single-job simulator (:mod:`prefect_cloudsched.simulate.spot_replay`)
drive the same :class:`SpotController`. It is pure: no clock, no I/O, no cloud SDK; the
caller supplies the time, the job's progress and what the market has shown.

Model (Wu et al., *Can't Be Late*, NSDI'24): a job of ``work_s`` seconds of compute must
finish by ``deadline_s``; entering spot or on-demand costs a change-over ``change_over_s``
(provisioning, setup and progress lost since the last checkpoint), billed at the new price;
going idle is free; on-demand is always available.

What it decides, every time it is asked (see :meth:`SpotController.decide`):

1. **Safety net** (provable). Idle, a non-on-demand choice is allowed only if, should it
   make no progress at all until the next decision (``horizon_s`` later), on-demand from
   then on, change-over included, still meets the deadline: ``remaining + d ≤ time_left −
   horizon``. On spot in a zone that is up, the job loses slack only once spot goes, and it
   is told at once (an interruption is a decision point), so it keeps ``d + late`` there:
   the change-over to on-demand and ``late_s``, how late a decision may come. Otherwise:
   on-demand, kept to the end. By induction the deadline is met whenever the job starts
   with ``work + d ≤ deadline − start``, whatever spot does.
2. **Exploitation.** On spot in a zone that is still up: stay.
3. **Commitment.** Off spot with less slack than a new spot start needs, on-demand to the
   end now: waiting could only end on on-demand too, one change-over later (Uniform
   Progress's commitment rule). A start needs ``max(2·(d + late), d + horizon + late)``:
   it spends ``d`` (late by up to ``late``) and must leave the ``d + late`` kept on spot,
   and, if the launch is refused, the idle safety net's ``d + horizon``. ``late_s``
   defaults to ``horizon_s``, right for a driver that learns of an interruption only on its
   decision timer. The runner checks its instance more often than it decides and passes
   ``check_s + end_s`` (0.4 of its interval by default: ``runtime/spot_live.py``); without
   any margin a start at the edge was moved off spot a moment later and missed its
   deadline in ``bench/bench_live_spot.py``. The trace replay sees an interruption at its
   tick and passes ``late_s=0``.
4. **Which spot.** Every zone that is up now is scored by the expected saving of starting
   there against doing the same work on on-demand, over the zone's *learned distribution of
   remaining up time* ``R`` (:class:`AvailabilityModel`):
   ``od·E[max(0, R − d)] − spot·E[R] − egress``. A run shorter than the change-over bills
   and gives nothing, which is why the whole distribution counts, not its mean. Leaving
   on-demand counts ``2d`` lost (the paper's lifetime-oracle thresholds ``k·d/(k−1)`` from
   idle and ``2k·d/(k−1)`` from on-demand, with ``R`` learned instead of known). A zone in
   another region than the checkpoint is a **move** and pays the checkpoint's egress. ``od``
   is the zone's region's on-demand, which runs the rest once spot ends; where it is dearer
   than the on-demand the job would run on instead (other instance types in the runner's
   markets), the difference on the remaining work is subtracted too.
5. **On-demand is left for spot only**, as soon as a spot start is worth it and the job is
   not behind its progress line; never for idle, since coming back would pay ``d`` again.
   No extra hysteresis (UP stays until two change-overs ahead): the score above already
   counts the second change-over of leaving on-demand.
6. **Progress line** (Uniform Progress, started late). Idle with no spot worth taking:
   on-demand once the job would be behind the line ``d`` from now (on-demand makes no
   progress during its change-over, so it starts that much early), wait otherwise. The
   line owes nothing for a share ``line_delay × slack / window`` of the slack (1.5 × 0.09 =
   14 % at slack 1.1, 75 % at slack 2.0), then runs straight to (deadline, work). Share 0
   is UP's line, 1 is greedy's: on the traces greedy beats UP at loose deadlines and loses
   at tight ones. And it waits rather than pay on-demand while spot alone, at
   ``confidence`` × the throughput learned for the best zone, would still finish in time.

Availability is **learned, not blacked out**: :class:`AvailabilityModel` records each zone's
up and down runs as they are observed (and any history the caller has) and predicts the
mean residual life of the current run from them, shrunk towards a prior whose mean grows with
the run's age (a zone that has been up for long is expected to stay up longer: decreasing
hazard, as the traces show). An interruption is one more short up-run in the estimate, not a
24 h ban.

Measured on the single-job bench grid (``bench/bench_spot.py`` → ``bench/results/spot.md``,
60 single-region cells × 40 start points, the replay billing per second): see
``docs/simulator.md`` for the figures, with ``late_s=0`` (the replay's) and at the runner's
default margin.

Interface for the task runner (and any other driver):

```python
controller = SpotController(markets, change_over_s=720, horizon_s=300, egress_usd=0.2)
controller.observe(zone, now_s, available)        # on every probe / launch / interruption
decision = controller.decide(JobStatus(now_s, work_s, done_s, deadline_s, start_s,
                                       placement=current, checkpoint_region="us-east-1"))
# decision.kind: SPOT (launch in decision.zone), ON_DEMAND (decision.region), WAIT
# (no instance until decision.recheck_at_s), STAY (keep the current instance);
# decision.moves: the checkpoint must travel to decision.region first (cooperative
# yield: prefect_cloudsched.prefect.checkpoint.request_move / MoveRequested).
```

Re-evaluate on an interruption, on a capacity change (a zone's availability flips) and at
``decision.recheck_at_s`` at the latest. A task that cannot checkpoint is decided once at
start and at each retry (its progress is 0 then), never moved mid-run.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

#: Residual-life prior: mean up-run (s) and its weight in pseudo-runs.
PRIOR_UP_S = 2 * 3600.0
PRIOR_WEIGHT = 2.0
#: Runs remembered per zone (older ones age out: markets drift).
MEMORY_RUNS = 200
EPS = 1e-6


class Kind(Enum):
    """What the job should do now."""

    SPOT = "spot"
    ON_DEMAND = "on-demand"
    WAIT = "wait"
    STAY = "stay"


@dataclass(frozen=True, slots=True)
class Market:
    """One spot zone the job may use, and the on-demand price of its region (USD/h)."""

    zone: str
    region: str
    spot_usd_per_hour: float
    on_demand_usd_per_hour: float


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the job runs now: ``kind`` SPOT (``zone``), ON_DEMAND (``region``) or WAIT."""

    kind: Kind = Kind.WAIT
    zone: str | None = None
    region: str | None = None


IDLE = Placement()


@dataclass(frozen=True, slots=True)
class JobStatus:
    """The job as the caller sees it now (all times in seconds on the caller's clock)."""

    now_s: float
    work_s: float
    done_s: float
    deadline_s: float
    start_s: float
    placement: Placement = IDLE
    checkpoint_region: str | None = None

    @property
    def remaining_s(self) -> float:
        """Compute time still to do."""
        return max(0.0, self.work_s - self.done_s)


@dataclass(frozen=True, slots=True)
class ControlDecision:
    """The controller's answer, with a reason for logs and the ledger."""

    kind: Kind
    zone: str | None = None
    region: str | None = None
    recheck_at_s: float = math.inf
    moves: bool = False
    reason: str = ""


@dataclass
class _ZoneRuns:
    up: bool | None = None
    since_s: float = 0.0
    up_runs: deque[float] = field(default_factory=lambda: deque(maxlen=MEMORY_RUNS))
    down_runs: deque[float] = field(default_factory=lambda: deque(maxlen=MEMORY_RUNS))


class AvailabilityModel:
    """Per-zone up/down run lengths, learned online; predicts how long spot stays up.

    Args:
        prior_up_s: Mean up-run assumed before any run is seen.
        prior_weight: How many observed runs the prior is worth.
    """

    def __init__(self, prior_up_s: float = PRIOR_UP_S, prior_weight: float = PRIOR_WEIGHT):
        self.prior_up_s = prior_up_s
        self.prior_weight = prior_weight
        self._zones: dict[str, _ZoneRuns] = {}

    def observe(self, zone: str, now_s: float, available: bool) -> None:
        """Record that ``zone`` is (not) available at ``now_s``; a flip closes a run."""
        runs = self._zones.setdefault(zone, _ZoneRuns())
        if runs.up is None:
            runs.up, runs.since_s = available, now_s
            return
        if available == runs.up:
            return
        length = now_s - runs.since_s
        (runs.up_runs if runs.up else runs.down_runs).append(length)
        runs.up, runs.since_s = available, now_s

    def is_up(self, zone: str) -> bool:
        """The zone's last observed state (unknown = not up)."""
        runs = self._zones.get(zone)
        return bool(runs and runs.up)

    def up_age_s(self, zone: str, now_s: float) -> float:
        """How long the zone's current up-run has lasted (0 if down or unknown)."""
        runs = self._zones.get(zone)
        if runs is None or not runs.up:
            return 0.0
        return max(0.0, now_s - runs.since_s)

    def residual_up_s(self, zone: str, now_s: float) -> float:
        """Predicted remaining up time: the mean residual life at the run's current age.

        ``(Σ_{runs > age} (run − age) + w·prior) / (#runs > age + w)``: runs that already
        ended before this age say nothing about this one; the prior (:meth:`_prior_s`) keeps
        a zone with few runs from looking certain either way.
        """
        runs = self._zones.get(zone)
        age = self.up_age_s(zone, now_s)
        total, count = self.prior_weight * self._prior_s(age), self.prior_weight
        if runs is not None:
            for length in runs.up_runs:
                if length > age:
                    total += length - age
                    count += 1
        return total / count

    def residual_stats(
        self, zone: str, now_s: float, cap_s: float, lost_s: float
    ) -> tuple[float, float]:
        """``(E[min(R, cap)], E[max(0, min(R, cap) − lost)])`` of the residual up time ``R``.

        The first is the billed time of a spot start now (``cap`` = the job's end), the
        second its useful time after ``lost`` seconds of change-over: a run shorter than the
        change-over bills and gives nothing, which a mean alone would hide. Over the runs
        longer than the current age, plus the exponential prior (closed form).
        """
        runs = self._zones.get(zone)
        age = self.up_age_s(zone, now_s)
        m, w = self._prior_s(age), self.prior_weight
        billed = w * m * (1 - math.exp(-cap_s / m))
        useful = w * m * max(0.0, math.exp(-lost_s / m) - math.exp(-cap_s / m))
        count = w
        if runs is not None:
            for length in runs.up_runs:
                if length > age:
                    rest = min(length - age, cap_s)
                    billed += rest
                    useful += max(0.0, rest - lost_s)
                    count += 1
        return billed / count, useful / count

    def _prior_s(self, age_s: float) -> float:
        """The prior's mean residual up time at a run's age: ``max(prior_up_s, age)``.

        Spot runs have a decreasing hazard (on the p3 trace the zone up the longest is the
        likeliest to last another 6 h: 74 % vs 70 % for a random up zone in us-west-2, 30 %
        vs 25 % in us-east-1), so a run that has lasted ``age`` is expected to last about as
        long again. A constant prior would pull an old run's few long precedents towards a
        short mean and steer the job to the zone that just came up.
        """
        return max(self.prior_up_s, age_s)

    def mean_up_s(self, zone: str) -> float:
        """Mean up-run, shrunk towards the prior."""
        runs = self._zones.get(zone)
        total, count = self.prior_weight * self.prior_up_s, self.prior_weight
        if runs is not None:
            total += sum(runs.up_runs)
            count += len(runs.up_runs)
        return total / count

    def availability(self, zone: str) -> float:
        """Fraction of observed time the zone was up (0.5 before anything is seen)."""
        runs = self._zones.get(zone)
        if runs is None:
            return 0.5
        up, down = sum(runs.up_runs), sum(runs.down_runs)
        return up / (up + down) if up + down > 0 else 0.5


class SpotController:
    """One job's spot/on-demand/wait/move policy (see the module docstring).

    Args:
        markets: Every spot zone the job may use.
        change_over_s: ``d``: time to get a new instance productive.
        horizon_s: Longest time between two decisions (the safety net's look-ahead).
        late_s: How late a decision may come after the event that calls for it (a
            runner's timer under load); ``None``: ``horizon_s``. 0 for a replay that
            decides exactly on its ticks.
        egress_usd: Cost of moving the checkpoint to another region.
        model: Availability learned so far (a fresh one by default).
        confidence: Share of spot's learned throughput counted on when deciding that
            spot alone can finish the job (0 = never count on it).
        line_delay: How late the progress line starts: it owes nothing for
            ``line_delay × slack / window`` of the slack (0 = Uniform Progress's line).
    """

    def __init__(
        self,
        markets: list[Market],
        *,
        change_over_s: float,
        horizon_s: float,
        late_s: float | None = None,
        egress_usd: float = 0.0,
        model: AvailabilityModel | None = None,
        confidence: float = 0.5,
        line_delay: float = 1.5,
    ) -> None:
        if not markets:
            raise ValueError("markets: give at least one spot zone")
        if change_over_s < 0 or horizon_s <= 0:
            raise ValueError("change_over_s must be >= 0 and horizon_s > 0")
        if late_s is not None and late_s < 0:
            raise ValueError("late_s must be >= 0 (or None for horizon_s)")
        self.markets = {m.zone: m for m in markets}
        self.change_over_s = change_over_s
        self.horizon_s = horizon_s
        self.late_s = horizon_s if late_s is None else late_s
        self.egress_usd = egress_usd
        self.model = model or AvailabilityModel()
        self.confidence = confidence
        self.line_delay = line_delay

    def observe(self, zone: str, now_s: float, available: bool) -> None:
        """Feed one observation of a zone (probe, launch result, interruption)."""
        self.model.observe(zone, now_s, available)

    # ------------------------------------------------------------------ decisions
    def decide(self, job: JobStatus) -> ControlDecision:
        """What the job should do now (see the module docstring for the rules)."""
        d = self.change_over_s
        here = job.placement
        remaining = job.remaining_s
        time_left = job.deadline_s - job.now_s
        if remaining <= EPS:
            return ControlDecision(Kind.WAIT, reason="done")
        slack = time_left - remaining
        late, h = self.late_s, self.horizon_s
        on_up_spot = here.kind is Kind.SPOT and here.zone and self.model.is_up(here.zone)
        # on spot an interruption is seen at once: d + late; idle, h may pass with no progress
        if slack < (d + late if on_up_spot else d + h) - EPS:
            return self._on_demand(job, "safety net: on-demand to the end keeps the deadline")
        if on_up_spot:
            return ControlDecision(Kind.STAY, here.zone, here.region, reason="on spot: stay")
        if slack < max(2 * (d + late), d + h + late) - EPS:
            # no spot start is allowed any more (it spends d and must leave spot's d + late,
            # or idle's d + h if refused): waiting could only end on on-demand, so go now
            return self._on_demand(job, "too little slack for a spot start: on-demand to the end")
        on_demand = here.kind is Kind.ON_DEMAND
        spot_can_finish = self._spot_can_finish(job)
        best = self._best_spot(job, leaving_on_demand=on_demand)
        if best is not None and (
            not on_demand or spot_can_finish or not self._behind(job, lead_s=0.0)
        ):
            market, saving = best
            moves = job.checkpoint_region not in (None, market.region)
            return ControlDecision(
                Kind.SPOT,
                market.zone,
                market.region,
                moves=moves,
                reason=f"spot in {market.zone}: expected saving ${saving:.2f}",
            )
        if on_demand:  # left for spot only: going idle would pay d again on the way back
            return ControlDecision(Kind.STAY, None, here.region, reason="on-demand until spot")
        if not spot_can_finish and self._behind(job, lead_s=d):  # on-demand gains after d
            return self._on_demand(job, "behind the progress line, no spot worth taking")
        return ControlDecision(
            Kind.WAIT,
            recheck_at_s=job.now_s + self.horizon_s,
            reason="ahead of the progress line, or spot expected to finish in time: wait",
        )

    def _spot_can_finish(self, job: JobStatus) -> bool:
        """Would spot alone, at its learned rate, finish the rest with a margin to spare?

        The rate is the best zone's availability times the share of an up-run left after a
        change-over, discounted by :attr:`confidence`; the time is what remains after one
        more change-over (the safety net's).
        """
        rate = 0.0
        for market in self.markets.values():
            mean_up = self.model.mean_up_s(market.zone)
            useful = max(0.0, 1 - self.change_over_s / mean_up) if mean_up > 0 else 0.0
            rate = max(rate, self.model.availability(market.zone) * useful)
        time_left = job.deadline_s - job.now_s - 2 * self.change_over_s
        return job.remaining_s <= self.confidence * rate * time_left

    def _line(self, job: JobStatus, at_s: float) -> float:
        """The progress line: flat for a share of the slack, then straight to the end.

        The share is ``line_delay × slack / (deadline − start)`` (at most 1): the looser the
        deadline, the later the line starts rising. 0 is Uniform Progress's line from
        (start, 0) to (deadline, work); a share of 1 would be greedy's.
        """
        window = max(job.deadline_s - job.start_s, EPS)
        slack = max(0.0, window - job.work_s)
        share = min(1.0, self.line_delay * slack / window)
        begin = job.start_s + share * slack
        span = job.deadline_s - begin
        if span <= 0:
            return job.work_s
        return min(job.work_s, job.work_s * max(0.0, at_s - begin) / span)

    def _behind(self, job: JobStatus, lead_s: float) -> bool:
        return job.done_s < self._line(job, job.now_s + lead_s) - EPS

    def _best_spot(self, job: JobStatus, *, leaving_on_demand: bool) -> tuple[Market, float] | None:
        """The up zone with the largest positive expected saving over on-demand, or None.

        The saving is counted against the on-demand the job would run on instead
        (:meth:`_reference_on_demand`), not each zone's own: after spot ends, the rest runs
        on-demand where the checkpoint then is, so a zone whose region's on-demand is dearer
        (another instance type, a pricier region) also pays that difference on the rest of
        the work. Without it a $1.66/h A100 spot zone "saved" more against its $5/h
        on-demand than a $0.03/h T4 spot zone against the job's $0.12/h one. Markets of one
        price (the trace replay's) are ranked exactly as before.
        """
        d = self.change_over_s
        reference = self._reference_on_demand(job)
        best: tuple[Market, float] | None = None
        for market in self.markets.values():
            if not self.model.is_up(market.zone):
                continue
            k = market.on_demand_usd_per_hour / max(market.spot_usd_per_hour, EPS)
            if k <= 1:
                continue
            # leaving on-demand pays a second change-over when spot ends (the paper's 2kd/(k-1))
            lost = d * (2 if leaving_on_demand else 1)
            billed, useful = self.model.residual_stats(
                market.zone, job.now_s, job.remaining_s + d, lost
            )
            egress = self.egress_usd if job.checkpoint_region not in (None, market.region) else 0.0
            dearer_rest = max(0.0, market.on_demand_usd_per_hour - reference) * job.remaining_s
            saving = (
                market.on_demand_usd_per_hour * useful
                - market.spot_usd_per_hour * billed
                - dearer_rest
            ) / 3600 - egress
            if saving <= 0:
                continue
            if best is None or saving > best[1]:
                best = (market, saving)
        return best

    def _on_demand(self, job: JobStatus, reason: str) -> ControlDecision:
        here = job.placement
        if here.kind is Kind.ON_DEMAND:
            return ControlDecision(Kind.STAY, None, here.region, reason=reason)
        region = job.checkpoint_region or self._cheapest_on_demand_region()
        return ControlDecision(Kind.ON_DEMAND, None, region, reason=reason)

    def _reference_on_demand(self, job: JobStatus) -> float:
        """USD/h of the on-demand the job runs on if it takes no spot now: in the region of
        its checkpoint when it has one (where :meth:`_on_demand` sends it), else the
        cheapest."""
        here = [
            m.on_demand_usd_per_hour
            for m in self.markets.values()
            if job.checkpoint_region is not None and m.region == job.checkpoint_region
        ]
        return min(here or [m.on_demand_usd_per_hour for m in self.markets.values()])

    def _cheapest_on_demand_region(self) -> str:
        return min(self.markets.values(), key=lambda m: m.on_demand_usd_per_hour).region


__all__ = [
    "IDLE",
    "AvailabilityModel",
    "ControlDecision",
    "JobStatus",
    "Kind",
    "Market",
    "Placement",
    "SpotController",
]
