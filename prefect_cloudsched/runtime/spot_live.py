"""The spot controller live in the runtime: wait, run on spot or on-demand, and move.

A task that is **spot-tolerant, checkpointable and has a deadline** runs under one
:class:`~prefect_cloudsched.core.policy.spot_control.SpotController` (the pure one the
single-job simulator replays), so the runner does what ``simulate/spot_replay.py`` simulates:

* **At each attempt's start** (``Session.place``) the controller is asked: SPOT → the
  decision is restricted to that market's spot offer; ON_DEMAND → the cheapest fitting
  on-demand offer of the region; WAIT → the task keeps no instance and sleeps until
  ``recheck_at_s``, re-asking on the way. A refused launch (``CapacityError``) is an
  observation "this market is down" and the controller is asked again instead of falling
  back to whatever ``decide()`` would pick.
* **While the body runs** a monitor re-evaluates on a timer (every ``horizon_s``, the
  controller's look-ahead, on a grid from the job's start) and on capacity changes (a
  probe or the instance check sees the market flip). It checks the instance more often
  than it decides (every ``check_s``, a fifth of ``horizon_s`` by default), so a reclaim
  is seen at most ``check_s`` late; the controller keeps ``late_s = check_s + end_s`` of
  margin for that and for the attempt to end and be placed again (``end_s``), instead of a
  whole decision interval. When the controller leaves the
  current placement (spot elsewhere, on-demand before an interruption, spot again from
  on-demand, or idle while ahead), it calls ``checkpoint.request_move(task_run_id)``: the
  body's next ``checkpoint.save()`` stores the state and raises ``MoveRequested``;
  ``Session.finish`` records the attempt as "moved" and the retry resumes from the
  checkpoint on the new placement. A spot instance found reclaimed stops billing at once
  and the body is asked to stop at its next save (a stand-in body keeps running in-process).
* **Observations**: launch results, interruptions, and, on trace-following stand-in
  clouds (``MockClouds(spot_trace=...)``, whose provisioners expose ``spot_trace_clock``),
  the trace's availability at every decision, read on the trace's scaled clock.

A market is one spot offer (an AWS region: launches land in its first zone with capacity).
Progress is the controller's own model: each attempt's run time after one change-over
(``change_over_s``) counts, as in the replay; the body's checkpoint holds the real state.

Tasks that **cannot checkpoint** are not controlled: they are decided at start and at each
retry only (``decide()`` with the run's interruptions), never moved mid-run — moving them
would throw their work away.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import Decision, PolicyConfig, cost_of
from prefect_cloudsched.core.policy.offer_filter import fitting, spot_within_band
from prefect_cloudsched.core.policy.spot_control import (
    IDLE,
    AvailabilityModel,
    ControlDecision,
    JobStatus,
    Kind,
    Market,
    Placement,
    SpotController,
)
from prefect_cloudsched.core.records import to_micro
from prefect_cloudsched.errors import MoveRequested, NoFeasibleOffer, SpotInterrupted
from prefect_cloudsched.runtime.spot_settings import (
    CHANGE_OVER_S,
    CHECKS_PER_DECISION,
    EGRESS_USD,
    END_S,
    HORIZON_S,
    SpotControlSettings,
)

if TYPE_CHECKING:
    from prefect_cloudsched.runtime.attempt import Attempt, TaskSpec


class RunView(Protocol):
    """What the controller reads of its run (``runtime.session.Session``, which owns it)."""

    catalog: Catalog
    policy: PolicyConfig
    provisioners: Mapping[str, Any]

    def decide(self, needs: TaskNeeds, *, submitted_at: datetime | None = None) -> Decision: ...


#: Without a probe, a market last seen down is tried again after this long.
REPROBE_S = 900.0


class WallClock:
    """Real time: the controller's seconds are wall seconds."""

    speed = 1.0  # controller seconds per wall second

    def now(self) -> float:
        return time.time()

    def available(self, region: str) -> bool | None:
        """A real market is not probed: a launch tells (None, as for an untraced region)."""
        return None

    def reclaim_at(self, region: str, launched_s: float) -> float | None:
        """A real cloud does not say in advance when it reclaims (None)."""
        return None


class TraceClockView:
    """A stand-in's scaled trace clock (``testing.clouds.TraceClock``) as the controller's."""

    def __init__(self, trace_clock: Any) -> None:
        self.trace_clock = trace_clock
        self.speed = 1.0 / trace_clock.scale

    def now(self) -> float:
        return float(self.trace_clock.now())

    def available(self, region: str) -> bool | None:
        """Whether a spot launch in ``region`` would succeed now (None: not traced)."""
        if region not in self.trace_clock.trace.regions:
            return None
        return self.trace_clock.launch(region) is not None

    def reclaim_at(self, region: str, launched_s: float) -> float | None:
        """When the stand-in reclaims a spot instance launched in ``region`` at
        ``launched_s``: the end of the up-run of the zone it landed in (None: not traced)."""
        if region not in self.trace_clock.trace.regions:
            return None
        landed = self.trace_clock.launch(region, launched_s)
        return None if landed is None else landed[1]


@dataclass
class _Job:
    """One controlled task run: its controller and the progress model."""

    controller: SpotController
    offers: dict[str, Offer]  # market → spot offer
    work_s: float
    start_s: float
    deadline_s: float
    done_s: float = 0.0
    placement: Placement = IDLE
    checkpoint_region: str | None = None
    running_since: float | None = None
    decided_at: float | None = None
    #: When the cloud will reclaim the spot instance, if it says (the trace stand-in does).
    reclaim_s: float | None = None
    moves: int = 0
    log: list[tuple[float, str, str]] = field(default_factory=list)


@dataclass(eq=False, repr=False)
class SpotLive:
    """The session's spot control: one controller per controlled task run.

    Live state of one session: compared by identity, not ``repr``-ed field by field.

    Args:
        session: The session whose catalog, policy and provisioners it uses.
        change_over_s / horizon_s / egress_usd: The controller's parameters (seconds on
            the controller's clock).
        check_s: How often a running spot instance is checked (``None``: a fifth of
            ``horizon_s``, following it when it is changed).
        end_s: How long an attempt may take to end, and its retry to be placed, after its
            loss is seen (see ``END_S``).

    The controller's margin for a late decision is ``late_s = check_s + end_s``: 120 s by
    default (0.4 of the decision interval), where a monitor that checked only on its
    decision timer needed a whole interval (300 s).
    """

    session: RunView
    _: KW_ONLY
    change_over_s: float = CHANGE_OVER_S
    horizon_s: float = HORIZON_S
    egress_usd: float = EGRESS_USD
    check_s: float | None = None
    end_s: float = END_S

    def __post_init__(self) -> None:
        provisioners = self.session.provisioners.values()
        traced = [getattr(p, "spot_trace_clock", None) for p in provisioners]
        traced = [t for t in traced if t is not None]
        self.clock: WallClock | TraceClockView = (
            TraceClockView(traced[0]) if traced else WallClock()
        )
        #: What the market has shown, shared by the run's tasks (a runner keeps learning).
        self.model = AvailabilityModel()
        self.jobs: dict[str, _Job] = {}
        self._monitors: dict[int, tuple[threading.Event, threading.Thread]] = {}
        #: The cooperative yield (``prefect_cloudsched.prefect.checkpoint``: ``request_move``,
        #: ``cancel_move``), given by the layer that owns checkpoints; None = never move.
        self.mover: Any = None
        self._losses: dict[int, SpotInterrupted] = {}
        self._lock = threading.Lock()

    @property
    def check_period_s(self) -> float:
        """Seconds between two checks of a running spot instance."""
        return self.check_s if self.check_s is not None else self.horizon_s / CHECKS_PER_DECISION

    @property
    def late_s(self) -> float:
        """How late a decision may come after a reclaim: seen ≤ one check late, then the
        attempt ends and its retry is placed (``end_s``)."""
        return self.check_period_s + self.end_s

    @staticmethod
    def controls(needs: TaskNeeds) -> bool:
        """Spot-tolerant, checkpointable and with a deadline: run under the controller."""
        return needs.allows_spot and needs.checkpointable and needs.deadline is not None

    # ------------------------------------------------------------------ the job
    def job(self, spec: TaskSpec, task_run_id: str) -> _Job:
        """The task run's controller (built at its first attempt)."""
        with self._lock:
            found = self.jobs.get(task_run_id)
            if found is not None:
                return found
            offers = self._spot_offers(spec.needs)
            if not offers:
                raise NoFeasibleOffer(f"{spec.task_name}: no spot offer fits its needs")
            markets = [
                Market(key, o.region, o.usd_per_hour, self._on_demand(spec.needs, o.region)
                       .usd_per_hour)
                for key, o in offers.items()
            ]  # fmt: skip
            now = self.clock.now()
            lag = (datetime.now(UTC) - spec.submitted_at).total_seconds() * self.clock.speed
            start = now - lag
            deadline = spec.decision.deadline or spec.submitted_at
            job = _Job(
                SpotController(
                    markets,
                    change_over_s=self.change_over_s,
                    horizon_s=self.horizon_s,
                    late_s=self.late_s,
                    egress_usd=self.egress_usd,
                    model=self.model,
                ),
                offers,
                work_s=spec.needs.est_runtime.total_seconds() * self.clock.speed,
                start_s=start,
                deadline_s=start
                + (deadline - spec.submitted_at).total_seconds() * self.clock.speed,
            )
            self.jobs[task_run_id] = job
            return job

    def _spot_offers(self, needs: TaskNeeds) -> dict[str, Offer]:
        """Cheapest fitting spot offer per region, on clouds with a provisioner (if any).

        The policy's ``max_spot_band`` holds here as in ``decide()``: the controller learns
        availability, but a zone the user ruled out is never one of its markets.
        """
        catalog = self.session.catalog
        policy = self.session.policy
        mask = fitting(needs, catalog, policy) & spot_within_band(catalog, policy.max_spot_band)
        clouds = set(self.session.provisioners)
        best: dict[str, Offer] = {}
        for offer, ok in zip(catalog.offers, mask, strict=True):
            if not ok or offer.option is not PurchaseOption.SPOT:
                continue
            if clouds and offer.cloud not in clouds:
                continue
            key = offer.zone or offer.region
            if key not in best or offer.usd_per_hour < best[key].usd_per_hour:
                best[key] = offer
        return best

    def _on_demand(self, needs: TaskNeeds, region: str | None) -> Offer:
        """The cheapest fitting on-demand offer in ``region`` (anywhere if none there)."""
        catalog = self.session.catalog
        mask = fitting(needs, catalog, self.session.policy)
        clouds = set(self.session.provisioners)
        found = [
            o
            for o, ok in zip(catalog.offers, mask, strict=True)
            if ok and o.option is PurchaseOption.ON_DEMAND and (not clouds or o.cloud in clouds)
        ]
        if not found:
            raise NoFeasibleOffer(f"no on-demand offer fits {needs}")
        here = [o for o in found if o.region == region] or found
        return min(here, key=lambda o: o.usd_per_hour)

    def _status(self, job: _Job, now: float) -> JobStatus:
        done = job.done_s
        if job.running_since is not None:
            done += max(0.0, now - job.running_since - self.change_over_s)
        # the model's progress is an estimate: until the body returns, the job is not done
        # (it may have lost the time since its last checkpoint), so a decision stays due
        done = min(done, job.work_s - min(self.horizon_s, job.work_s))
        return JobStatus(
            now, job.work_s, done, job.deadline_s, job.start_s, job.placement,
            job.checkpoint_region,
        )  # fmt: skip

    def _observe(self, job: _Job, now: float) -> None:
        """Feed what the market shows now: the trace's availability, or a re-probe hope."""
        for key, offer in job.offers.items():
            seen = self.clock.available(offer.region)
            if seen is not None:
                job.controller.observe(key, now, seen)
            elif not self.model.is_up(key) and now - self._down_since(key) >= REPROBE_S:
                job.controller.observe(key, now, True)  # unknown: a launch will tell

    def _down_since(self, key: str) -> float:
        runs = self.model._zones.get(key)
        return -math.inf if runs is None else runs.since_s

    def ask(self, job: _Job) -> ControlDecision:
        """Observe, then ask the controller."""
        now = self.clock.now()
        self._observe(job, now)
        decision = job.controller.decide(self._status(job, now))
        job.log.append((now, decision.kind.value, decision.reason))
        if decision.kind in (Kind.SPOT, Kind.ON_DEMAND):
            job.decided_at = now  # the change-over (provisioning included) starts here
        return decision

    # ------------------------------------------------------------------ at place()
    def choose(self, spec: TaskSpec, task_run_id: str, base: Decision) -> Decision:
        """The attempt's decision: wait (sleeping here) until the controller picks one.

        With no fitting spot offer there is nothing to control: ``decide()``'s choice stands.
        """
        try:
            job = self.job(spec, task_run_id)
        except NoFeasibleOffer:
            return base
        while True:
            control = self.ask(job)
            if control.kind is Kind.SPOT and control.zone in job.offers:
                return self._decision(base, job.offers[control.zone], control, job, spec.needs)
            if control.kind in (Kind.ON_DEMAND, Kind.STAY):
                offer = self._on_demand(spec.needs, control.region or job.checkpoint_region)
                return self._decision(base, offer, control, job, spec.needs)
            if control.reason == "done":
                return base  # the model says done; let the body confirm from its checkpoint
            self._sleep_until(job, control.recheck_at_s)

    def _sleep_until(self, job: _Job, until_s: float) -> None:
        """Sleep on the decision grid (every ``horizon_s`` from the job's start)."""
        now = self.clock.now()
        target = min(until_s, self._next_tick(job, now))
        time.sleep(max(0.0, (target - now) / self.clock.speed))

    def _next_tick(self, job: _Job, now: float, period: float | None = None) -> float:
        """The next point after ``now`` of a grid of ``period`` (the decision interval by
        default) from the job's start."""
        period = self.horizon_s if period is None else period
        k = math.floor((now - job.start_s) / period + 1e-9) + 1
        return job.start_s + k * period

    def _decision(
        self, base: Decision, offer: Offer, control: ControlDecision, job: _Job, needs: TaskNeeds
    ) -> Decision:
        """``base`` moved to ``offer``; a move's transfer is part of what it expects to pay
        (a budget hold then covers the transfer row too)."""
        moving = job.checkpoint_region not in (None, offer.region)
        expected = cost_of(offer, needs.est_runtime.total_seconds()) + (
            self.egress_usd if moving else 0.0
        )
        if offer.key == base.offer.key:
            runner_up, runner_up_cost = base.runner_up, base.runner_up_cost
        else:  # the policy's own pick is what the controller chose over
            runner_up, runner_up_cost = base.offer, base.expected_cost
        return replace(
            base,
            offer=offer,
            expected_cost=expected,
            marginal_cost=None,  # a spot or on-demand start costs what it is billed
            runner_up=runner_up,
            runner_up_cost=runner_up_cost,
            reasons=(*base.reasons, f"spot control: {control.reason}"),
        )

    def transfer(self, task_run_id: str, offer: Offer) -> tuple[str | None, int]:
        """Where a start on ``offer`` moves the task's checkpoint from, and what the
        transfer is billed in micro-dollars (``(None, 0)``: no move).

        The same rule as the replay's and as :meth:`started`'s count of moves: a start in
        another region than the last attempt's.
        """
        job = self.jobs.get(task_run_id)
        if job is None or job.checkpoint_region in (None, offer.region):
            return None, 0
        return job.checkpoint_region, to_micro(self.egress_usd)

    def refused(self, spec: TaskSpec, task_run_id: str, decision: Decision) -> Decision:
        """A launch was refused for capacity: observe the market down, ask again."""
        job = self.jobs.get(task_run_id)
        if job is None:  # not controlled after all (no spot offer): the usual fallback
            return self.session.decide(spec.needs, submitted_at=spec.submitted_at)
        key = decision.offer.zone or decision.offer.region
        if decision.offer.option is PurchaseOption.SPOT:
            job.controller.observe(key, self.clock.now(), False)
        return self.choose(spec, task_run_id, decision)

    # ------------------------------------------------------------------ while running
    def started(self, attempt: Attempt) -> None:
        """The attempt's instance is up: record the placement, start the monitor."""
        job = self.jobs.get(attempt.task_run_id)
        if job is None:  # no spot offer fitted: decided like any other task
            return
        offer = attempt.decision.offer
        now = self.clock.now()
        key = offer.zone or offer.region
        if offer.option is PurchaseOption.SPOT:
            job.controller.observe(key, now, True)
            job.placement = Placement(Kind.SPOT, key, offer.region)
            launched = now if job.decided_at is None else job.decided_at
            job.reclaim_s = self.clock.reclaim_at(offer.region, launched)
        else:
            job.placement = Placement(Kind.ON_DEMAND, None, offer.region)
        if job.checkpoint_region not in (None, offer.region):
            job.moves += 1
        job.checkpoint_region = offer.region
        job.log.append((now, "started", offer.key))
        # progress counts from the decision: the change-over d includes provisioning
        job.running_since = now if job.decided_at is None else min(now, job.decided_at)
        job.decided_at = None
        if self.mover is not None:  # a request left over from the last attempt is void
            self.mover.cancel_move(attempt.task_run_id)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._monitor, args=(attempt, job, stop), daemon=True, name="spot-control"
        )
        with self._lock:
            self._monitors[id(attempt)] = (stop, thread)
        thread.start()

    def _monitor(self, attempt: Attempt, job: _Job, stop: threading.Event) -> None:
        """Check the instance every ``check_s`` and re-evaluate on the decision grid;
        request a move when the instance is lost or the controller leaves here."""
        while True:
            now = self.clock.now()
            decide_at = self._next_tick(job, now)
            wake = min(decide_at, self._next_tick(job, now, self.check_period_s))
            if stop.wait(max(0.0, (wake - now) / self.clock.speed)):
                return
            if self._lost(attempt, job):
                self._move(attempt, "spot instance reclaimed")
                return
            if self.mover is None or wake < decide_at - 1e-6 * self.horizon_s:
                continue  # an instance check only: decisions stay on their grid
            control = self.ask(job)
            if control.kind is Kind.STAY:
                continue
            if self._market_down(job) and self._confirm_loss(attempt, job, stop):
                self._move(attempt, "spot instance reclaimed")
            else:
                self._move(attempt, control.reason)
            return

    def _market_down(self, job: _Job) -> bool:
        zone = job.placement.zone
        return job.placement.kind is Kind.SPOT and zone is not None and not self.model.is_up(zone)

    def _confirm_loss(self, attempt: Attempt, job: _Job, stop: threading.Event) -> bool:
        """The probe saw our spot market go down: wait (up to one decision) for the cloud
        to reclaim the instance, so the attempt ends as the interruption it is."""
        seen = time.perf_counter()
        deadline = time.monotonic() + self.horizon_s / self.clock.speed
        while time.monotonic() < deadline and not stop.is_set():
            if self._lost(attempt, job):
                # billing ended when the market went down (the cloud's reclaim, if it told)
                attempt.stopped_at = min(seen, attempt.stopped_at or seen)
                return True
            stop.wait(min(0.01, self.horizon_s / self.clock.speed / 10))
        return False

    def _move(self, attempt: Attempt, reason: str) -> None:
        if self.mover is not None:
            self.mover.request_move(attempt.task_run_id, f"spot control: {reason}")

    def _lost(self, attempt: Attempt, job: _Job) -> bool:
        """Was the spot instance reclaimed? Billing ends now and the market is down."""
        if job.placement.kind is not Kind.SPOT or attempt.handle is None:
            return False
        provisioner = self.session.provisioners.get(attempt.handle.cloud)
        try:
            if provisioner is not None:
                provisioner.check(attempt.handle)
            return False
        except SpotInterrupted as lost:
            now = self.clock.now()
            lost_at = self._lost_at(job, now)
            # billing and work ended at the reclaim, not when we noticed it
            attempt.stopped_at = max(
                attempt.t0, time.perf_counter() - (now - lost_at) / self.clock.speed
            )
            with self._lock:
                self._losses[id(attempt)] = lost  # the cloud reports a loss only once
            job.controller.observe(job.placement.zone or "", lost_at, False)
            return True
        except Exception:  # a failed check is not a loss; finish() checks again
            return False

    @staticmethod
    def _lost_at(job: _Job, now: float) -> float:
        """When the spot instance was lost: the cloud's reclaim time if it told (the trace
        stand-in's zone went down then; a scaled clock sees it a scheduling delay late),
        else ``now``, when it was noticed."""
        if job.reclaim_s is not None and job.reclaim_s <= now:
            return job.reclaim_s
        return now

    def check_lost(self, attempt: Attempt) -> None:
        """Raise the interruption the monitor saw (the cloud's check reports it only once).

        Raises:
            SpotInterrupted: the attempt's spot instance was reclaimed while it ran.
        """
        with self._lock:
            lost = self._losses.pop(id(attempt), None)
        if lost is not None:
            raise lost

    def ended(self, attempt: Attempt, error: BaseException | None) -> None:
        """Stop the monitor and count the attempt's progress (the replay's model)."""
        with self._lock:
            monitor = self._monitors.pop(id(attempt), None)
            self._losses.pop(id(attempt), None)
        if monitor is not None:
            monitor[0].set()
        job = self.jobs.get(attempt.task_run_id)
        if job is None or job.running_since is None:
            return
        now = self.clock.now()
        if attempt.stopped_at is not None:  # billing (and work) ended then
            now -= (time.perf_counter() - attempt.stopped_at) * self.clock.speed
        if isinstance(error, SpotInterrupted):  # no work after the reclaim
            now = min(now, self._lost_at(job, now))
        job.done_s += max(0.0, now - job.running_since - self.change_over_s)
        job.running_since, job.reclaim_s = None, None
        if isinstance(error, SpotInterrupted) and job.placement.zone:
            job.controller.observe(job.placement.zone, now, False)
        if isinstance(error, MoveRequested | SpotInterrupted) or error is None:
            job.placement = IDLE


__all__ = ["SpotControlSettings", "SpotLive", "TraceClockView", "WallClock"]
