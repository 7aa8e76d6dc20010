"""Discrete-event core for the elastic-cloud policies (on-demand, spot, greedy, UP, hybrid).

Capacity model: an elastic cloud. Every job runs on an instance of its own (one task per
instance, as the task runner places them), started when the policy says so; there is no
queue for capacity, only spot availability (:mod:`.spot`) and the reserved pool the hybrid
holds. A policy sees one job at a time and answers with an :class:`Action`: run on an offer
(until an optional re-evaluation time), or wait until a time. The engine owns the clock,
billing, preemptions, change-overs and the shared
:class:`~prefect_cloudsched.core.policy.PlacementState`.

Mechanics, identical for every policy:

* The first start of a job is immediate; every later start (after a preemption or a
  switch) spends ``PolicyConfig.change_over`` before work resumes, billed.
* A preempted checkpointable job keeps its progress; any other job starts again from zero.
* Money follows :mod:`prefect_cloudsched.core.accounting`, as the ledger rows do: a job is
  charged its offer's rate for its segments (a reservation at its amortised rate while the
  job holds it), on-demand and spot per second with a minimum of ``min_billed_s`` (60 s,
  AWS's and GCP's minimum). The reservation's idle time is charged to no job: the hybrid's
  commitment is paid in full over the replay, its idle part reported apart by
  :mod:`.metrics` (``reserved (idle)``).
* Interruptions raise the hazard ``decide()`` uses for that capacity, for
  ``interruption_memory_s`` (a day); an offer that failed to launch is blocked for
  ``block_s`` (30 min) — the task runner's fallback, with an expiry because a replay spans
  weeks, not one flow run.

Decisions go through :class:`DecisionCache`, which calls ``prefect_cloudsched.core.policy.decide``
— the task runner's function — and memoises its answer per (variant, needs class, run-time
bucket of 1/4 octave, spot-slack verdict, set of reserved pools with an idle instance, state
version); a new or expired interruption, a block or an unblock bumps the version and empties
the cache.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from prefect_cloudsched.core import policy as placement
from prefect_cloudsched.core.accounting import MIN_BILLED_S, charge_usd
from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.energy import EnergyModel
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import DEFAULT_POLICY, PlacementState, PolicyConfig
from prefect_cloudsched.errors import NoFeasibleOffer
from prefect_cloudsched.simulate.jobs import Job
from prefect_cloudsched.simulate.spot import SpotModel

INF = math.inf
#: Replay time 0 as a datetime, for ``decide(now=...)``.
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
DONE_EPS = 1e-6

#: Decision variants a policy can ask for (needs/catalog variants of the same ``decide()``).
#: ``exact``: the task's needs as the runner sees them; ``od``: spot disallowed; ``free``:
#: the deadline left to the caller's own progress control; ``spot``: like ``free``, but only a
#: spot answer counts (None when ``decide()`` prefers anything else); ``unreserved``: like
#: ``free``, but asked as if every reserved pool were busy (the hybrid keeps its reservation
#: for work that may not use spot, and asks this before it would take a reserved instance).
VARIANTS = ("exact", "od", "free", "spot", "unreserved")


@dataclass(frozen=True, slots=True)
class Action:
    """What a policy wants for a job now: run on ``offer`` (``None`` = wait) until ``until``."""

    offer: Offer | None
    until: float = INF


class JobRun:
    """One job's state during a replay (progress, current instance, bills, energy)."""

    __slots__ = (
        "base_progress",
        "co2_g",
        "cost",
        "cost_by_option",
        "decide_s",
        "finish",
        "index",
        "interruptions",
        "job",
        "kwh",
        "launched",
        "needs_class",
        "offer",
        "preempt_at",
        "progress",
        "seconds_by_option",
        "seg_start",
        "segments",
        "wake",
        "work_from",
    )

    def __init__(self, index: int, job: Job, needs_class: int) -> None:
        self.index = index
        self.job = job
        self.needs_class = needs_class
        self.progress = 0.0
        self.base_progress = 0.0
        self.offer: Offer | None = None
        self.seg_start = 0.0
        self.work_from = 0.0
        self.preempt_at = INF
        self.launched = False
        self.finish: float | None = None
        self.wake = job.submit_s
        self.cost = 0.0
        self.cost_by_option: dict[str, float] = {}
        self.seconds_by_option: dict[str, float] = {}
        self.interruptions = 0
        self.decide_s = 0.0
        self.kwh = 0.0
        self.co2_g = 0.0
        #: (offer, elapsed s, work s) per closed instance segment, when the replay records them.
        self.segments: list[tuple[Offer, float, float]] | None = None

    def progress_at(self, t: float) -> float:
        """Work done by ``t`` (seconds of the job's duration)."""
        if self.offer is None:
            return self.progress
        return self.base_progress + max(0.0, t - self.work_from)

    def remaining_at(self, t: float) -> float:
        """Work left at ``t``."""
        return max(0.0, self.job.duration_s - self.progress_at(t))

    @property
    def option(self) -> PurchaseOption | None:
        """Purchase option of the instance the job is on (None while waiting)."""
        return None if self.offer is None else self.offer.option


class Context(Protocol):
    """What the engine offers a policy."""

    change_over_s: float
    seen_end_s: float

    def decide(self, run: JobRun, now: float, variant: str) -> Offer | None: ...
    def spot_up(self, offer: Offer, now: float) -> bool: ...
    def next_spot_up(self, offer: Offer, now: float) -> float: ...
    def block(self, offer: Offer, now: float) -> None: ...
    def unblock(self, offer: Offer) -> None: ...
    def next_reserved_release(self, run: JobRun, now: float) -> float: ...


class ElasticPolicy(Protocol):
    """A per-job policy on the elastic cloud."""

    name: str

    def act(self, run: JobRun, now: float, ctx: Context) -> Action: ...


def needs_class_key(needs: TaskNeeds) -> tuple:
    """Everything in a job's needs that ``decide()`` sees except run time and deadline."""
    return (
        needs.gpus,
        needs.gpu_type,
        needs.cpus,
        needs.memory_gib,
        needs.priority,
        needs.spot_ok,
        needs.checkpointable,
        needs.data_region,
        needs.input_gib,
    )


@dataclass(eq=False, repr=False)
class DecisionCache:
    """Calls the shared ``decide()`` with a simulated clock, memoised per needs class.

    Mutable memo state: compared by identity, not ``repr``-ed field by field.

    Args:
        catalog: All offers.
        config: The policy knobs every variant shares.
        state: The replay's shared placement state.
        memoise: Off = call ``decide()`` for every request (for checking the memo).
    """

    catalog: Catalog
    config: PolicyConfig
    state: PlacementState
    _: KW_ONLY
    memoise: bool = True

    def __post_init__(self) -> None:
        self.version = 0
        self.reserved_open: tuple[str, ...] = self._open_pools()
        self.calls = 0
        self.requests = 0
        self._memo: dict[tuple, Offer | None] = {}
        self._classes: dict[tuple, int] = {}
        # The same interruptions and blocks (shared objects), no idle reservation.
        self._unreserved = PlacementState(
            reserved_free={}, interruptions=self.state.interruptions, blocked=self.state.blocked
        )

    def class_of(self, needs: TaskNeeds) -> int:
        """A small integer per distinct needs class (cheap memo keys)."""
        return self._classes.setdefault(needs_class_key(needs), len(self._classes))

    def bump(self) -> None:
        """Interruptions or blocks changed: older answers may be wrong."""
        self.version += 1
        self._memo.clear()

    def pools_changed(self) -> None:
        """A reserved pool emptied or refilled: answers are keyed by the open pools."""
        self.reserved_open = self._open_pools()

    def _open_pools(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, n in self.state.reserved_free.items() if n > 0))

    def decide(self, run: JobRun, now: float, variant: str) -> Offer | None:
        """The offer ``decide()`` picks for ``run``'s remaining work; None if nothing fits."""
        self.requests += 1
        job = run.job
        remaining = max(run.remaining_at(now), 1.0)
        change_over = self.config.change_over.total_seconds()
        lost = remaining / 2 if job.needs.checkpointable else remaining
        slack_ok = job.deadline_s - now >= remaining + lost + 2 * change_over
        key = (
            variant,
            run.needs_class,
            round(4 * math.log2(remaining)),
            slack_ok,
            () if variant == "unreserved" else self.reserved_open,
        )
        if self.memoise and key in self._memo:
            return self._memo[key]
        needs = job.needs
        changes: dict = {"est_runtime": timedelta(seconds=remaining)}
        if variant == "od":
            changes["spot_ok"] = False
        if variant in ("free", "spot", "unreserved"):
            changes["deadline"] = None
        else:
            changes["deadline"] = EPOCH + timedelta(seconds=job.deadline_s)
        needs = replace(needs, **changes)
        self.calls += 1
        try:
            offer: Offer | None = placement.decide(
                needs,
                self.catalog,
                now=EPOCH + timedelta(seconds=now),
                submitted_at=EPOCH + timedelta(seconds=job.submit_s),
                state=self._unreserved if variant == "unreserved" else self.state,
                config=self.config,
            ).offer
        except NoFeasibleOffer:
            offer = None
        if variant == "spot" and offer is not None and offer.option is not PurchaseOption.SPOT:
            offer = None
        if self.memoise:
            self._memo[key] = offer
        return offer


@dataclass
class ElasticOutcome:
    """What one policy's replay produced (aggregated by :mod:`.metrics`)."""

    runs: list[JobRun]
    unplaceable: list[Job]
    decide_calls: int
    decide_requests: int
    reserved: dict[str, tuple[Offer, int]]
    reserved_busy_s: float
    wall_s: float


class ElasticSimulator:
    """Replays jobs on the elastic cloud under one policy.

    Args:
        jobs: The jobs, sorted by submission.
        catalog: Offers.
        policy: The policy.
        spot: Spot availability.
        config: Shared ``decide()`` knobs (``change_over`` is the move delay).
        reserved: Reserved instances held, per capacity key: (RESERVED offer, count).
        energy: Power/carbon model.
        min_billed_s: Minimum billed seconds per on-demand/spot instance.
        interruption_memory_s: How long an interruption raises its capacity's hazard.
        block_s: How long a failed spot launch keeps its offer blocked.
        memoise: Memoise ``decide()`` per needs class and state version.
        record_segments: Keep every job's instance segments (for the gap breakdown).
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        catalog: Catalog,
        policy: ElasticPolicy,
        *,
        spot: SpotModel,
        config: PolicyConfig = DEFAULT_POLICY,
        reserved: Mapping[str, tuple[Offer, int]] | None = None,
        energy: EnergyModel | None = None,
        min_billed_s: float = MIN_BILLED_S,
        interruption_memory_s: float = 86400.0,
        block_s: float = 1800.0,
        memoise: bool = True,
        record_segments: bool = False,
    ) -> None:
        self.jobs = jobs
        self.record_segments = record_segments
        self.policy = policy
        self.spot = spot
        self.config = config
        self.change_over_s = config.change_over.total_seconds()
        self.reserved = dict(reserved or {})
        self.state = PlacementState(reserved_free={k: n for k, (_, n) in self.reserved.items()})
        self.cache = DecisionCache(catalog, config, self.state, memoise=memoise)
        self.energy = energy or EnergyModel()
        self.min_billed_s = min_billed_s
        self.interruption_memory_s = interruption_memory_s
        self.block_s = block_s
        self._interruptions: deque[tuple[float, str]] = deque()
        self._blocks: deque[tuple[float, str]] = deque()
        self.reserved_busy_s = 0.0
        self._on_pool: dict[str, dict[int, JobRun]] = {k: {} for k in self.reserved}
        #: Latest submit + duration among the jobs submitted so far (no replay ends earlier).
        self.seen_end_s = 0.0
        self._fits_pool: dict[tuple[int, str], bool] = {}

    # ----------------------------------------------------------------- Context for policies

    def decide(self, run: JobRun, now: float, variant: str) -> Offer | None:
        """Memoised ``decide()`` (timed into the job's decision latency)."""
        started = time.perf_counter()
        try:
            return self.cache.decide(run, now, variant)
        finally:
            run.decide_s += time.perf_counter() - started

    def spot_up(self, offer: Offer, now: float) -> bool:
        """Would a launch of this spot offer succeed now?"""
        return self.spot.launch(offer, now) is not None

    def next_spot_up(self, offer: Offer, now: float) -> float:
        """Earliest time a launch of this spot offer would succeed."""
        return self.spot.next_up(offer, now)

    def block(self, offer: Offer, now: float) -> None:
        """A launch failed: keep the offer out of decisions for ``block_s``."""
        self.state.block(offer.key, "no spot capacity in the replayed trace")
        self._blocks.append((now + self.block_s, offer.key))
        self.cache.bump()

    def unblock(self, offer: Offer) -> None:
        """Lift a block early (the failover found another offer; try this one first again)."""
        if self.state.blocked.pop(offer.key, None) is not None:
            self.state.version += 1
            self.cache.bump()

    def next_reserved_release(self, run: JobRun, now: float) -> float:
        """When the first busy reserved instance that fits ``run`` frees up (inf: none).

        A job on a reserved instance is never preempted, so its finish is known: the time
        its remaining work ends. Other jobs may be waiting for the same instance.
        """
        soonest = INF
        for key, occupants in self._on_pool.items():
            if not self._fits(run, key):
                continue
            if self.state.reserved_free.get(key, 0) > 0:
                continue  # idle, yet decide() did not take it: not usable for this job
            for other in occupants.values():
                soonest = min(soonest, other.work_from + other.job.duration_s - other.base_progress)
        return soonest

    def _fits(self, run: JobRun, pool: str) -> bool:
        known = self._fits_pool.get((run.needs_class, pool))
        if known is None:
            offer = self.reserved[pool][0]
            needs = run.job.needs
            known = (
                offer.vcpus >= needs.cpus
                and offer.memory_gib >= needs.memory_gib
                and (offer.gpu_count >= needs.gpus if needs.gpus else offer.gpu_count == 0)
                and (not needs.gpus or not needs.gpu_type or offer.gpu_type == needs.gpu_type)
            )
            self._fits_pool[(run.needs_class, pool)] = known
        return known

    # ----------------------------------------------------------------- the event loop

    def run(self) -> ElasticOutcome:
        """Replay every job to completion."""
        started = time.perf_counter()
        runs: list[JobRun] = []
        unplaceable: list[Job] = []
        heap: list[tuple[float, int]] = []
        for job in self.jobs:
            run = JobRun(len(runs), job, self.cache.class_of(job.needs))
            if self.record_segments:
                run.segments = []
            runs.append(run)
            heap.append((job.submit_s, run.index))
        heapq.heapify(heap)
        while heap:
            t, index = heapq.heappop(heap)
            run = runs[index]
            self._expire(t)
            self._step(run, t)
            if run.finish is None:
                if run.wake == INF:
                    unplaceable.append(run.job)
                    continue
                heapq.heappush(heap, (run.wake, index))
        done = [r for r in runs if r.finish is not None]
        return ElasticOutcome(
            runs=done,
            unplaceable=unplaceable,
            decide_calls=self.cache.calls,
            decide_requests=self.cache.requests,
            reserved=self.reserved,
            reserved_busy_s=self.reserved_busy_s,
            wall_s=time.perf_counter() - started,
        )

    def _expire(self, t: float) -> None:
        changed = False
        while self._interruptions and self._interruptions[0][0] <= t - self.interruption_memory_s:
            _, key = self._interruptions.popleft()
            left = self.state.interruptions[key] - 1
            if left > 0:
                self.state.interruptions[key] = left
            else:
                del self.state.interruptions[key]
            changed = True
        while self._blocks and self._blocks[0][0] <= t:
            _, key = self._blocks.popleft()
            if not any(k == key for _, k in self._blocks):
                self.state.blocked.pop(key, None)
            changed = True
        if changed:
            self.cache.bump()

    def _step(self, run: JobRun, t: float) -> None:
        self.seen_end_s = max(self.seen_end_s, run.job.submit_s + run.job.duration_s)
        if run.offer is not None:
            if run.progress_at(t) >= run.job.duration_s - DONE_EPS:
                self._close(run, t)
                run.finish = t
                return
            if run.offer.option is PurchaseOption.SPOT and t >= run.preempt_at:
                self._close(run, t, preempted=True)
        action = self.policy.act(run, t, self)
        if action.offer is None:
            if run.offer is not None:
                self._close(run, t)
            if run.progress >= run.job.duration_s - DONE_EPS:
                run.finish = t
                return
            if action.until <= t:
                raise RuntimeError(f"policy {self.policy.name} waits without a future wake-up")
            run.wake = action.until
            return
        if run.offer is not None and action.offer.key == run.offer.key:
            run.wake = min(run.work_from + run.job.duration_s - run.base_progress,
                           run.preempt_at, max(action.until, t + 1e-3))  # fmt: skip
            return
        if run.offer is not None:
            self._close(run, t)
        self._open(run, action, t)

    def _open(self, run: JobRun, action: Action, t: float) -> None:
        offer = action.offer
        assert offer is not None
        preempt_at = INF
        if offer.option is PurchaseOption.SPOT:
            end = self.spot.launch(offer, t)
            if end is None:
                raise RuntimeError(
                    f"policy {self.policy.name} launched spot {offer.key} while down"
                )
            preempt_at = end
        elif offer.option is PurchaseOption.RESERVED:
            if not self.state.take_reserved(offer.capacity_key):
                raise RuntimeError(f"policy {self.policy.name} took a busy reservation")
            self._on_pool.setdefault(offer.capacity_key, {})[run.index] = run
            if self.state.reserved_free[offer.capacity_key] == 0:
                self.cache.pools_changed()
        delay = self.change_over_s if run.launched else 0.0
        run.launched = True
        run.offer = offer
        run.seg_start = t
        run.work_from = t + delay
        run.base_progress = run.progress
        run.preempt_at = preempt_at
        finish = run.work_from + run.job.duration_s - run.progress
        run.wake = min(finish, preempt_at, max(action.until, t + 1e-3))

    def _close(self, run: JobRun, t: float, *, preempted: bool = False) -> None:
        offer = run.offer
        assert offer is not None
        elapsed = t - run.seg_start
        run.progress = min(run.progress_at(t), run.job.duration_s)
        if run.segments is not None:
            run.segments.append((offer, elapsed, max(0.0, run.progress - run.base_progress)))
        option = offer.option.value
        if offer.option is PurchaseOption.RESERVED:
            self.state.release_reserved(offer.capacity_key)
            self._on_pool.get(offer.capacity_key, {}).pop(run.index, None)
            if self.state.reserved_free[offer.capacity_key] == 1:
                self.cache.pools_changed()
            self.reserved_busy_s += elapsed
            cost = charge_usd(offer, elapsed)
        else:
            cost = charge_usd(offer, max(elapsed, self.min_billed_s))
        run.cost += cost
        run.cost_by_option[option] = run.cost_by_option.get(option, 0.0) + cost
        run.seconds_by_option[option] = run.seconds_by_option.get(option, 0.0) + elapsed
        kwh, co2 = self.energy.energy(offer, elapsed)
        run.kwh += kwh
        run.co2_g += co2
        run.offer = None
        run.preempt_at = INF
        if preempted:
            run.interruptions += 1
            self.state.record_interruption(offer.capacity_key)
            self._interruptions.append((t, offer.capacity_key))
            self.cache.bump()
            if not run.job.needs.checkpointable:
                run.progress = 0.0


__all__ = [
    "EPOCH",
    "VARIANTS",
    "Action",
    "Context",
    "DecisionCache",
    "ElasticOutcome",
    "ElasticPolicy",
    "ElasticSimulator",
    "JobRun",
    "needs_class_key",
]
