"""Cost-aware per-job policies for the elastic cloud: on-demand, spot, greedy, UP, hybrid.

Each policy answers, for one job at a time, "run on which offer until when, or wait until
when" (:class:`~prefect_cloudsched.simulate.engine.Action`). Which offer is never chosen
here: every policy asks the shared ``decide()`` (through the engine's memoised
``ctx.decide``) for a variant of the job's needs:

* ``on-demand`` — ``decide()`` with spot disallowed.
* ``spot-only`` — spot for every spot-tolerant job (``decide()``'s choice with the deadline
  left out, when that choice is a spot offer);
  waits for that offer's capacity when it is gone and restarts after each preemption (from
  a checkpoint if the job has one), whatever the deadline. No-spot jobs run on-demand.
* ``greedy`` (Wu et al., NSDI'24, §3) — spot while available, idle while not, and on-demand
  to the end from the last moment that still meets the deadline (slack ≤ one change-over).
* ``uniform-progress`` (UP, Wu et al., NSDI'24, §4, from the paper's description) — keeps the
  job at or above the straight line from (submit, 0) to (deadline − change-over, work):
  spot when available; when spot is down, on-demand only while behind the line, idle while
  ahead; once on on-demand it returns to spot only after getting one change-over ahead of
  the line (hysteresis, so it does not thrash); the same last-moment safety net as greedy.
* ``hybrid`` (ours) — reserved capacity planned ahead (held in the engine's state, used
  first because ``decide()`` prices idle reserved capacity at zero), the runner's own
  placement for jobs that may not use spot, and UP's progress control for spot-tolerant
  jobs with two differences: the spot offer is ``decide()``'s cheapest expected-cost choice
  among *all* regions, and, when the job is behind the line and that offer is down, a
  launch that fails blocks it and asks ``decide()`` again (the runner's fallback), so it
  moves to another spot offer before paying on-demand; it moves back to the cheaper offer
  when that returns.
"""

from __future__ import annotations

import math

from prefect_cloudsched.core.catalog import Offer, PurchaseOption
from prefect_cloudsched.core.needs import Priority
from prefect_cloudsched.simulate.engine import Action, Context, JobRun

INF = math.inf
#: Seconds of slack treated as none (float noise at the last safe moment).
EPS = 1e-3
#: How many regions the hybrid tries per decision before it falls back to the progress rule.
MAX_FAILOVER = 4


def _od(run: JobRun, now: float, ctx: Context) -> Action:
    if run.offer is not None and run.offer.option is not PurchaseOption.SPOT:
        return Action(run.offer)
    return Action(ctx.decide(run, now, "od"), INF)


def _slack(run: JobRun, now: float) -> float:
    return run.job.deadline_s - now - run.remaining_at(now)


class OnDemandOnly:
    """Every job on the cheapest fitting on-demand offer."""

    name = "on-demand"

    def act(self, run: JobRun, now: float, ctx: Context) -> Action:
        """Run on on-demand."""
        return _od(run, now, ctx)


class SpotOnly:
    """Spot for every spot-tolerant job, waiting for capacity; never falls back on a deadline."""

    name = "spot-only"

    def act(self, run: JobRun, now: float, ctx: Context) -> Action:
        """Run on spot when up, else wait for it."""
        if not run.job.needs.allows_spot:
            return _od(run, now, ctx)
        offer = ctx.decide(run, now, "spot")
        if offer is None:
            return _od(run, now, ctx)
        if ctx.spot_up(offer, now):
            return Action(offer)
        back = ctx.next_spot_up(offer, now)
        return Action(None, back) if back < INF else _od(run, now, ctx)


class Greedy:
    """Spot until the slack runs out, then on-demand to the end."""

    name = "greedy"

    def act(self, run: JobRun, now: float, ctx: Context) -> Action:
        """Spot if up; else idle until spot returns or the last safe moment."""
        needs = run.job.needs
        if not needs.allows_spot or run.option is PurchaseOption.ON_DEMAND:
            return _od(run, now, ctx)
        margin = ctx.change_over_s
        slack = _slack(run, now)
        if slack <= margin + EPS:
            return _od(run, now, ctx)
        if run.option is PurchaseOption.SPOT:
            return Action(run.offer)
        offer = ctx.decide(run, now, "spot")
        if offer is None:
            return _od(run, now, ctx)
        if ctx.spot_up(offer, now):
            return Action(offer)
        commit = now + slack - margin
        return Action(None, min(ctx.next_spot_up(offer, now), commit))


class UniformProgress:
    """Uniform Progress (Wu et al., NSDI'24), implemented from the paper's description."""

    name = "uniform-progress"

    def act(self, run: JobRun, now: float, ctx: Context) -> Action:
        """Follow the uniform-progress line; see the module docstring."""
        needs = run.job.needs
        if not needs.allows_spot:
            return self.no_spot(run, now, ctx)
        margin = ctx.change_over_s
        slack = _slack(run, now)
        if slack <= margin + EPS:
            return _od(run, now, ctx)
        if run.option is PurchaseOption.SPOT or run.option is PurchaseOption.RESERVED:
            return Action(run.offer)
        job = run.job
        span = job.deadline_s - margin - job.submit_s
        rate = job.duration_s / span if span > 0 else INF
        done = run.progress_at(now)
        line = rate * (now - job.submit_s)
        offer, back = self.spot_offer(run, now, ctx)
        on_od = run.option is PurchaseOption.ON_DEMAND
        if offer is not None:
            if on_od and done < line + margin and rate < 1:
                # t* where on-demand progress (rate 1) gets one change-over above the line
                cross = (now - done + margin - rate * job.submit_s) / (1 - rate)
                return Action(run.offer, max(cross, now + 1.0))
            return Action(offer)
        if done < line:
            chosen = run.offer if on_od else self.fallback(run, now, ctx)
            return Action(chosen, back)
        catch_up = job.submit_s + done / rate if rate > 0 else INF
        commit = now + slack - margin
        return Action(None, max(min(back, catch_up, commit), now + 1.0))

    def no_spot(self, run: JobRun, now: float, ctx: Context) -> Action:
        """Jobs that may not use spot: on-demand."""
        return _od(run, now, ctx)

    def fallback(self, run: JobRun, now: float, ctx: Context) -> Offer | None:
        """The non-spot offer used while behind the line."""
        return ctx.decide(run, now, "od")

    def spot_offer(self, run: JobRun, now: float, ctx: Context) -> tuple[Offer | None, float]:
        """(an available spot offer or None, when to look again if None)."""
        offer = ctx.decide(run, now, "spot")
        if offer is None:
            return None, INF
        if ctx.spot_up(offer, now):
            return offer, now
        return None, ctx.next_spot_up(offer, now)


class Hybrid(UniformProgress):
    """Ours: reserved plan + the runner's ``decide()`` + deadline-aware multi-region spot."""

    name = "hybrid"

    def no_spot(self, run: JobRun, now: float, ctx: Context) -> Action:
        """The runner's placement: idle reserved first, else wait for one, else on-demand.

        When ``decide()`` answers on-demand because the reservation that fits is busy, a
        job that is not realtime waits for the first reserved instance to free up, as long
        as it could still start on-demand then and meet its deadline with one change-over
        to spare, and end before the work already submitted ends (the reservation is paid
        to the end of the replay); otherwise, or at that last moment, it takes
        ``decide()``'s answer.
        """
        if run.offer is not None:
            return Action(run.offer)
        offer = ctx.decide(run, now, "exact")
        if offer is None or offer.option is not PurchaseOption.ON_DEMAND:
            return Action(offer, INF)
        if run.job.needs.priority is Priority.REALTIME:
            return Action(offer, INF)
        remaining = run.remaining_at(now)
        latest = run.job.deadline_s - remaining - ctx.change_over_s
        # Waiting must not stretch the replay, which the reservation is paid for: only
        # while a start at the release would end before work already submitted ends.
        latest = min(latest, ctx.seen_end_s - remaining)
        release = max(ctx.next_reserved_release(run, now), now + 1.0)
        if release <= latest:
            return Action(None, release)
        return Action(offer, INF)

    def act(self, run: JobRun, now: float, ctx: Context) -> Action:
        """UP's control, plus: leave a dearer spot offer once the preferred one is back.

        The failover (:meth:`fallback`) may put a job on a spot offer dearer than
        ``decide()``'s first choice (another shape or region) while that one is down; UP's
        "stay on spot" would keep it there for the rest of the job. So a job on spot is
        re-evaluated when the preferred offer returns, and moves to it if it is cheaper.
        """
        if run.option is PurchaseOption.SPOT and run.offer is not None:
            preferred, back = self.spot_offer(run, now, ctx)
            if preferred is not None and preferred.key != run.offer.key:
                if preferred.usd_per_hour < run.offer.usd_per_hour:
                    return Action(preferred)
            elif preferred is None and back < INF:
                return Action(run.offer, back)
        return super().act(run, now, ctx)

    def fallback(self, run: JobRun, now: float, ctx: Context) -> Offer | None:
        """Behind the line with the preferred spot down: another spot offer, else non-spot.

        The runner's failover: a spot offer that cannot launch is blocked and ``decide()``
        is asked again (another region or shape), up to :data:`MAX_FAILOVER` times; then
        reserved if idle (``decide()`` prices it at zero), else on-demand. Only here, where
        UP would pay on-demand: while ahead of the line the job waits for the cheapest spot
        instead of paying a dearer one (the failover used to run on every decision, so a
        1-GPU job sat on a 4-GPU spot instance whenever its own was down). The replay knows
        when each offer returns, so the blocks are lifted at once: the preferred offer stays
        decide()'s first answer and the job moves back to it (see :meth:`act`).
        """
        tried: list[Offer] = []
        found: Offer | None = None
        if run.job.needs.allows_spot and _slack(run, now) > 2 * ctx.change_over_s + EPS:
            for _ in range(MAX_FAILOVER):
                offer = ctx.decide(run, now, "unreserved")
                if offer is None or offer.option is not PurchaseOption.SPOT:
                    break
                if ctx.spot_up(offer, now):
                    found = offer
                    break
                ctx.block(offer, now)
                tried.append(offer)
        for offer in tried:  # blocked only to ask for the next one: the preferred stays first
            ctx.unblock(offer)
        return found or ctx.decide(run, now, "od")

    def spot_offer(self, run: JobRun, now: float, ctx: Context) -> tuple[Offer | None, float]:
        """``decide()``'s cheapest spot choice, if it is up (else when it returns).

        Asked with the reservation hidden (variant ``unreserved``): a spot-tolerant job that
        takes an idle reserved instance pays nothing now, but the next job that may not use
        spot then pays on-demand, while this one could have run on spot. It gets reserved
        capacity only through :meth:`fallback`, instead of on-demand. A restart on spot
        needs two change-overs of slack (UP's safety net allows for only one, so a spot
        start that spends it and is then lost misses the deadline).
        """
        if run.launched and _slack(run, now) <= 2 * ctx.change_over_s + EPS:
            # A new spot start spends one change-over; after it, another must remain for
            # the on-demand fallback should this spot be lost too. Otherwise stay put.
            return None, INF
        offer = ctx.decide(run, now, "unreserved")
        if offer is None or offer.option is not PurchaseOption.SPOT:
            return None, INF
        if ctx.spot_up(offer, now):
            return offer, now
        return None, ctx.next_spot_up(offer, now)


ELASTIC_POLICIES = {p.name: p for p in (OnDemandOnly, SpotOnly, Greedy, UniformProgress, Hybrid)}

__all__ = [
    "ELASTIC_POLICIES",
    "Greedy",
    "Hybrid",
    "OnDemandOnly",
    "SpotOnly",
    "UniformProgress",
]
