"""Discrete-event replay of the queueing disciplines on a fixed on-demand fleet.

Capacity model (so the comparison can be judged): each job's instance type is the on-demand
offer ``decide()`` picks for its needs (the same call the other policies make). Jobs that
map to the same type share a *pool* of identical instances, one job per instance at a time.
A pool holds ``ceil(headroom × mean concurrent jobs)`` instances (at least 1), the mean
taken over the trace's offered load (duration-weighted, from time 0 to the last end), and
is bought on-demand for the whole replay: from time 0 to the last completion, busy or idle.
``headroom`` defaults to 1.25 — a fleet sized for the mean with a quarter spare, as an
operator without a forecast would buy it. Jobs wait in the discipline's order
(:mod:`prefect_cloudsched.simulate.baselines`) when their pool is full; idle instances draw
idle power.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from prefect_cloudsched.core.catalog import Catalog, Offer
from prefect_cloudsched.core.energy import EnergyModel
from prefect_cloudsched.core.policy import DEFAULT_POLICY, PlacementState, PolicyConfig
from prefect_cloudsched.simulate.baselines import QueueDiscipline
from prefect_cloudsched.simulate.engine import DecisionCache, JobRun
from prefect_cloudsched.simulate.jobs import Job

DEFAULT_HEADROOM = 1.25


@dataclass
class Pool:
    """Identical on-demand instances serving the jobs that map to one instance type."""

    offer: Offer
    size: int = 1
    idle: list[int] = field(default_factory=list)
    queue: list[tuple[tuple, int]] = field(default_factory=list)
    lanes: list[deque[int]] = field(default_factory=list)
    running: list[bool] = field(default_factory=list)
    free_at: list[tuple[float, int]] = field(default_factory=list)
    turn: int = 0
    busy_s: float = 0.0


@dataclass
class FleetOutcome:
    """What one discipline's replay produced."""

    runs: list[JobRun]
    unplaceable: list[Job]
    pools: dict[str, Pool]
    makespan_s: float
    kwh: float
    co2_g: float
    decide_calls: int
    decide_requests: int
    wall_s: float


def plan_fleet(
    jobs: Sequence[Job], runs: Sequence[JobRun], cache: DecisionCache, headroom: float
) -> tuple[dict[str, Pool], list[int | None]]:
    """Instance type per job (``decide()``, on-demand) and pool sizes from the mean load."""
    pools: dict[str, Pool] = {}
    work: dict[str, float] = {}
    assignment: list[int | None] = []
    keys: list[str] = []
    end = max((j.submit_s + j.duration_s for j in jobs), default=1.0)
    for run in runs:
        started = time.perf_counter()
        offer = cache.decide(run, run.job.submit_s, "od")
        run.decide_s = time.perf_counter() - started
        if offer is None:
            assignment.append(None)
            continue
        pools.setdefault(offer.capacity_key, Pool(offer))
        work[offer.capacity_key] = work.get(offer.capacity_key, 0.0) + run.job.duration_s
        if offer.capacity_key not in keys:
            keys.append(offer.capacity_key)
        assignment.append(keys.index(offer.capacity_key))
    for key, pool in pools.items():
        pool.size = max(1, math.ceil(headroom * work[key] / max(end, 1.0)))
        pool.idle = list(range(pool.size - 1, -1, -1))
        pool.lanes = [deque() for _ in range(pool.size)]
        pool.running = [False] * pool.size
        pool.free_at = [(0.0, i) for i in range(pool.size)]
    return {k: pools[k] for k in keys}, assignment


class FleetSimulator:
    """Replays jobs on a fixed fleet under a queueing discipline.

    Args:
        jobs: Jobs sorted by submission.
        catalog: Offers.
        discipline: Order/assignment rule.
        config: ``decide()`` knobs (allowed clouds/regions shape the fleet's types).
        headroom: Fleet size ÷ mean concurrent jobs, per pool.
        energy: Power/carbon model.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        catalog: Catalog,
        discipline: QueueDiscipline,
        *,
        config: PolicyConfig = DEFAULT_POLICY,
        headroom: float = DEFAULT_HEADROOM,
        energy: EnergyModel | None = None,
    ) -> None:
        if headroom <= 0:
            raise ValueError("headroom must be > 0")
        self.jobs = jobs
        self.discipline = discipline
        self.cache = DecisionCache(catalog, config, PlacementState())
        self.headroom = headroom
        self.energy = energy or EnergyModel()

    def run(self) -> FleetOutcome:
        """Replay every job to completion."""
        started = time.perf_counter()
        runs = [JobRun(i, job, self.cache.class_of(job.needs)) for i, job in enumerate(self.jobs)]
        pools, assignment = plan_fleet(self.jobs, runs, self.cache, self.headroom)
        pool_list = list(pools.values())
        done: list[tuple[float, int, int, int]] = []
        unplaceable: list[Job] = []
        makespan = 0.0
        seq = 0
        for run, slot in zip(runs, assignment, strict=True):
            if slot is None:
                unplaceable.append(run.job)
                continue
            t = run.job.submit_s
            while done and done[0][0] <= t:
                makespan = max(makespan, self._complete(heapq.heappop(done), pool_list, runs, done))
            self._arrive(run, pool_list[slot], slot, t, done, seq)
            seq += 1
        while done:
            makespan = max(makespan, self._complete(heapq.heappop(done), pool_list, runs, done))
        kwh = co2 = 0.0
        for pool in pools.values():
            busy = self.energy.energy(pool.offer, pool.busy_s)
            idle = self.energy.energy(pool.offer, pool.size * makespan - pool.busy_s, busy=False)
            kwh += busy[0] + idle[0]
            co2 += busy[1] + idle[1]
        return FleetOutcome(
            runs=[r for r in runs if r.finish is not None],
            unplaceable=unplaceable,
            pools=pools,
            makespan_s=makespan,
            kwh=kwh,
            co2_g=co2,
            decide_calls=self.cache.calls,
            decide_requests=self.cache.requests,
            wall_s=time.perf_counter() - started,
        )

    def _arrive(self, run: JobRun, pool: Pool, slot: int, t: float, done: list, seq: int) -> None:
        mode = self.discipline.assign
        if mode == "queue":
            if pool.idle:
                self._start(run, pool, slot, pool.idle.pop(), t, done)
            else:
                assert self.discipline.order is not None
                heapq.heappush(pool.queue, (self.discipline.order(run.job, seq), run.index))
            return
        if mode == "round-robin":
            instance = pool.turn % pool.size
            pool.turn += 1
        else:
            free_at, instance = heapq.heappop(pool.free_at)
            heapq.heappush(pool.free_at, (max(free_at, t) + run.job.duration_s, instance))
        if pool.running[instance]:
            pool.lanes[instance].append(run.index)
        else:
            self._start(run, pool, slot, instance, t, done)

    def _start(
        self, run: JobRun, pool: Pool, slot: int, instance: int, t: float, done: list
    ) -> None:
        pool.running[instance] = True
        run.offer = pool.offer
        run.seg_start = t
        pool.busy_s += run.job.duration_s
        end = t + run.job.duration_s
        heapq.heappush(done, (end, run.index, slot, instance))

    def _complete(
        self, event: tuple[float, int, int, int], pools: list[Pool], runs: list[JobRun], done: list
    ) -> float:
        t, index, slot, instance = event
        run = runs[index]
        run.finish = t
        run.progress = run.job.duration_s
        run.offer = None
        pool = pools[slot]
        pool.running[instance] = False
        if self.discipline.assign == "queue":
            if pool.queue:
                _, nxt = heapq.heappop(pool.queue)
                self._start(runs[nxt], pool, slot, instance, t, done)
            else:
                pool.idle.append(instance)
        elif pool.lanes[instance]:
            self._start(runs[pool.lanes[instance].popleft()], pool, slot, instance, t, done)
        return t


__all__ = ["DEFAULT_HEADROOM", "FleetOutcome", "FleetSimulator", "Pool", "plan_fleet"]
