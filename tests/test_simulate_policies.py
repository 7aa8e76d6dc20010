"""Each policy on tiny hand-checkable traces; the bound ≤ every policy; the shared decide()."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prefect_cloudsched.core.policy as policy_pkg
from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.needs import Priority, TaskNeeds
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.simulate import compare_policies
from prefect_cloudsched.simulate.baselines import DISCIPLINES
from prefect_cloudsched.simulate.bound import omniscient_bound
from prefect_cloudsched.simulate.engine import ElasticSimulator
from prefect_cloudsched.simulate.fleet import FleetSimulator
from prefect_cloudsched.simulate.jobs import Job
from prefect_cloudsched.simulate.metrics import RESERVED_IDLE, summarise_elastic
from prefect_cloudsched.simulate.spot import Lane, SpotModel, SpotTrace
from prefect_cloudsched.simulate.spot_policies import (
    Greedy,
    Hybrid,
    OnDemandOnly,
    SpotOnly,
    UniformProgress,
)
from prefect_cloudsched.testing.offers import make_offer

OD, SPOT, RES = 1.0, 0.3, 0.6  # USD per hour of the one instance type
CO = 180.0  # change-over, seconds
H = 3600.0
CONFIG = PolicyConfig(change_over=timedelta(seconds=CO))


def offer(region: str, option: PurchaseOption, price: float) -> Offer:
    return make_offer(
        "g.x", option, price, od=OD, gpu="T4", region=region, band="<5%", vcpus=4, mem=16
    )


def catalog(*regions: str, spot_prices: tuple[float, ...] | None = None) -> Catalog:
    offers = []
    for i, region in enumerate(regions):
        offers.append(offer(region, PurchaseOption.ON_DEMAND, OD))
        offers.append(offer(region, PurchaseOption.SPOT, (spot_prices or (SPOT,) * 9)[i]))
        offers.append(offer(region, PurchaseOption.RESERVED, RES))
    return Catalog(offers)


def world(lanes: dict[str, list[tuple[float, float]]]) -> SpotModel:
    """A trace: region → its single zone's up intervals."""
    trace = SpotTrace(
        instance_type="g.x",
        span_s=1e9,
        regions={r: [f"{r}a"] for r in lanes},
        lanes={f"{r}a": Lane([s for s, _ in ivs], [e for _, e in ivs]) for r, ivs in lanes.items()},
    )
    return SpotModel(trace=trace, horizon_s=1e7)


def job(
    submit: float = 0.0,
    duration: float = 2 * H,
    slack: float = 3.0,
    *,
    spot: bool = True,
    checkpointable: bool = True,
    priority: Priority = Priority.BATCH,
    name: str = "j",
) -> Job:
    needs = TaskNeeds(
        gpus=1,
        cpus=1,
        memory_gib=1,
        est_runtime=timedelta(seconds=duration),
        deadline=timedelta(seconds=slack * duration),
        priority=priority,
        spot_ok=spot,
        checkpointable=checkpointable,
    )
    return Job(name, submit, duration, submit + slack * duration, "test", needs)


# Spot up for the first hour, down for the second, up again from 2 h on.
GAP = {"us-east-1": [(0.0, H), (2 * H, 1e9)]}


def replay(policy, jobs, spot=None, cat=None, reserved=None):
    sim = ElasticSimulator(
        jobs, cat or catalog("us-east-1"), policy, spot=spot or world(GAP), config=CONFIG,
        reserved=reserved,
    )  # fmt: skip
    return sim.run()


def test_on_demand_pays_the_list_price_and_finishes_at_once() -> None:
    out = replay(OnDemandOnly(), [job(duration=H)])
    (run,) = out.runs
    assert run.finish == H
    assert run.cost == pytest.approx(OD)
    assert run.cost_by_option == {"on-demand": pytest.approx(OD)}


def test_greedy_waits_for_spot_when_the_slack_allows() -> None:
    (run,) = replay(Greedy(), [job(slack=3.0)]).runs
    # spot 0–1 h, preempted, idle until spot returns at 2 h, change-over, the last hour on spot
    assert run.finish == pytest.approx(2 * H + CO + H)
    assert run.interruptions == 1
    assert run.cost == pytest.approx(SPOT * (H + CO + H) / H)


def test_greedy_commits_to_on_demand_at_the_last_safe_moment() -> None:
    (run,) = replay(Greedy(), [job(slack=1.5)]).runs
    deadline = 1.5 * 2 * H
    commit = deadline - H - CO  # one hour of work left, one change-over to start on-demand
    assert run.finish == pytest.approx(deadline)
    assert run.cost == pytest.approx(SPOT + OD * (deadline - commit) / H)


def test_uniform_progress_meets_the_deadline_cheaper_than_greedy() -> None:
    up = replay(UniformProgress(), [job(slack=1.5)]).runs[0]
    greedy = replay(Greedy(), [job(slack=1.5)]).runs[0]
    assert up.finish <= up.job.deadline_s
    assert up.cost_by_option.get("on-demand", 0) > 0  # fell behind the line during the gap
    assert up.cost_by_option.get("spot", 0) > SPOT  # and went back to spot when it returned
    assert up.cost < greedy.cost


def test_spot_only_restarts_a_job_without_checkpoints_and_misses() -> None:
    (run,) = replay(SpotOnly(), [job(slack=1.5, checkpointable=False)]).runs
    assert run.finish == pytest.approx(2 * H + CO + 2 * H)  # all progress lost at 1 h
    assert run.finish > run.job.deadline_s
    assert run.cost == pytest.approx(SPOT * (H + CO + 2 * H) / H)


def test_no_spot_jobs_never_touch_spot() -> None:
    for policy in (SpotOnly(), Greedy(), UniformProgress(), Hybrid()):
        (run,) = replay(policy, [job(spot=False, priority=Priority.HIGH)]).runs
        assert set(run.cost_by_option) == {"on-demand"}


def test_hybrid_uses_an_idle_reservation_first_then_on_demand() -> None:
    cat = catalog("us-east-1")
    reserved_offer = next(o for o in cat.offers if o.option is PurchaseOption.RESERVED)
    jobs = [job(0, H, spot=False, name="a"), job(10, H, spot=False, name="b")]
    out = replay(
        Hybrid(), jobs, cat=cat, reserved={reserved_offer.capacity_key: (reserved_offer, 1)}
    )
    first, second = sorted(out.runs, key=lambda r: r.job.submit_s)
    # Charged the reservation's amortised rate while it held it, as its ledger row would be.
    assert first.cost == pytest.approx(RES) and first.seconds_by_option == {"reserved": H}
    assert second.cost_by_option == {"on-demand": pytest.approx(OD)}
    assert out.reserved_busy_s == H
    # The policy's figures split the commitment as the ledger does: what jobs were charged
    # for the time they held it (1 h), and the idle rest of the replay (makespan 2 h + 10 s).
    result = summarise_elastic("hybrid", out)
    held = RES * result.makespan_s / H
    assert result.cost_by_option["reserved"] == pytest.approx(RES)
    assert result.cost_by_option[RESERVED_IDLE] == pytest.approx(held - RES)
    assert result.cost == pytest.approx(held + OD)  # the whole commitment, paid once


def test_hybrid_moves_region_when_the_cheapest_spot_is_gone() -> None:
    cat = catalog("us-east-1", "us-west-2", spot_prices=(0.2, 0.3))
    spot = world({"us-east-1": [(5 * H, 1e9)], "us-west-2": [(0.0, 1e9)]})
    (run,) = replay(Hybrid(), [job(slack=3.0)], spot=spot, cat=cat).runs
    assert run.cost == pytest.approx(0.3 * 2)  # whole job on us-west-2 spot
    greedy = replay(Greedy(), [job(slack=3.0)], spot=spot, cat=cat).runs[0]
    assert greedy.cost > run.cost  # greedy waits for us-east-1, then pays on-demand


def test_the_simulator_calls_the_shared_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    real = policy_pkg.decide
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs["now"])
        return real(*args, **kwargs)

    monkeypatch.setattr(policy_pkg, "decide", counting)
    jobs = [job(submit=i * 10.0, duration=H, name=f"j{i}") for i in range(20)]
    replay(OnDemandOnly(), jobs)
    assert 1 <= len(calls) < len(jobs)  # memoised per needs class
    calls.clear()
    ElasticSimulator(jobs, catalog("us-east-1"), OnDemandOnly(), spot=world(GAP), config=CONFIG,
                     memoise=False).run()  # fmt: skip
    assert len(calls) == len(jobs)


def test_fleet_disciplines_order_the_queue() -> None:
    jobs = [
        job(0, 100, 100, spot=False, name="first"),
        job(1, 50, 100, spot=False, priority=Priority.BATCH, name="long-late"),
        job(2, 10, 2, spot=False, priority=Priority.REALTIME, name="short-urgent"),
    ]
    order = {}
    for name in ("fcfs", "sjn", "edf", "priority"):
        out = FleetSimulator(jobs, catalog("us-east-1"), DISCIPLINES[name], config=CONFIG,
                             headroom=0.01).run()  # fmt: skip
        assert sum(p.size for p in out.pools.values()) == 1
        order[name] = [r.job.job_id for r in sorted(out.runs, key=lambda r: r.finish)]
    assert order["fcfs"] == ["first", "long-late", "short-urgent"]
    for name in ("sjn", "edf", "priority"):
        assert order[name] == ["first", "short-urgent", "long-late"]


def test_fleet_cost_is_the_whole_fleet_over_the_replay() -> None:
    jobs = [job(0, H, spot=False, name="a"), job(2 * H, H, spot=False, name="b")]
    comparison = compare_policies(jobs, ["fcfs", "on-demand"], catalog=catalog("us-east-1"),
                                  config=CONFIG, spot=world(GAP), headroom=0.01)  # fmt: skip
    fcfs, ondemand = comparison.results
    assert fcfs.cost == pytest.approx(OD * 3)  # one instance held from 0 to 3 h
    assert fcfs.utilisation == pytest.approx(2 / 3)
    assert ondemand.cost == pytest.approx(2 * OD)


def test_bound_by_hand() -> None:
    cat = catalog("us-east-1")
    spot = world({"us-east-1": [(0.0, H), (2.5 * H, 1e9)]})
    loose, tight, no_spot = job(slack=3.0), job(slack=1.5), job(slack=3.0, spot=False)
    bound = omniscient_bound([loose, tight, no_spot], cat, spot, CONFIG)
    assert bound.per_job[0] == pytest.approx(2 * SPOT)
    assert bound.per_job[1] == pytest.approx(1.5 * SPOT + 0.5 * RES)  # spot 1.5 h, rest reserved
    assert bound.per_job[2] == pytest.approx(2 * RES)


ALL = ("fcfs", "round-robin", "priority", "sjn", "edf", "wlb", "on-demand", "spot-only",
       "greedy", "uniform-progress", "hybrid")  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(
        st.tuples(
            st.floats(0, 5 * H), st.floats(1, 3 * H), st.sampled_from([1.2, 1.5, 3.0]),
            st.booleans(), st.booleans(),
        ),
        min_size=1,
        max_size=5,
    ),
    cuts=st.lists(st.floats(0, 20 * H), min_size=0, max_size=6),
)  # fmt: skip
def test_bound_is_below_every_policy_that_meets_its_deadlines(specs, cuts) -> None:
    jobs = sorted(
        (job(s, d, k, spot=sp, checkpointable=c, name=f"j{i}")
         for i, (s, d, k, sp, c) in enumerate(specs)),
        key=lambda j: j.submit_s,
    )  # fmt: skip
    edges = sorted(cuts)
    ups, up, last = [], True, 0.0
    for edge in [*edges, 1e9]:
        if up and edge > last:
            ups.append((last, edge))
        up, last = not up, edge
    cat = catalog("us-east-1")
    res = next(o for o in cat.offers if o.option is PurchaseOption.RESERVED)
    comparison = compare_policies(
        jobs, ALL, catalog=cat, config=CONFIG, spot=world({"us-east-1": ups or [(0.0, 1.0)]}),
        reserved={res.capacity_key: (res, 1)},
    )  # fmt: skip
    for result in comparison.results:
        assert result.cost >= 0
        if result.deadline_misses == 0:
            assert comparison.bound.over(result.placed) <= result.cost + 1e-9, result.policy


def test_same_seed_same_results() -> None:
    cat = catalog("us-east-1", "us-west-2", spot_prices=(0.2, 0.3))
    jobs = [job(i * 600.0, H * (1 + i % 3), 2.0, name=f"j{i}") for i in range(12)]

    def figures():
        spot = SpotModel(seed=7, mean_outage_s=H)
        comparison = compare_policies(jobs, ALL, catalog=cat, config=CONFIG, spot=spot, plan=False)
        skip = {"wall_s", "jobs_per_s", "decision_latency_mean_us", "decision_latency_p99_us"}
        return [{k: v for k, v in r.to_dict().items() if k not in skip} for r in comparison.results]

    assert figures() == figures()


def test_reservations_are_cut_to_what_pays_per_second() -> None:
    from prefect_cloudsched.simulate.compare import worth_reserving

    reserved = offer("us-east-1", PurchaseOption.RESERVED, RES)  # 0.6 of on-demand
    steady = np.array([2.5] * 100)
    assert worth_reserving(steady, 5, reserved) == 2  # the third is busy only half the time
    assert worth_reserving(np.array([0.4] * 100), 1, reserved) == 0
    assert worth_reserving(steady, 1, reserved) == 1  # never more than the plan


def _reserved(cat: Catalog, instance_type: str = "g.x") -> Offer:
    return next(
        o for o in cat.offers
        if o.option is PurchaseOption.RESERVED and o.instance_type == instance_type
    )  # fmt: skip


def test_hybrid_leaves_the_reservation_to_work_that_may_not_use_spot() -> None:
    cat = catalog("us-east-1")
    res = _reserved(cat)
    jobs = [job(0, H, 3.0, name="spot-ok"), job(10, H, 1.0, spot=False, name="no-spot",
                                                priority=Priority.HIGH)]  # fmt: skip
    out = replay(Hybrid(), jobs, spot=world({"us-east-1": [(0.0, 1e9)]}), cat=cat,
                 reserved={res.capacity_key: (res, 1)})  # fmt: skip
    tolerant, strict = sorted(out.runs, key=lambda r: r.job.submit_s)
    assert set(tolerant.seconds_by_option) == {"spot"}
    assert strict.seconds_by_option == {"reserved": H} and strict.cost == pytest.approx(RES)


def test_hybrid_waits_for_a_reserved_instance_when_the_slack_allows() -> None:
    cat = catalog("us-east-1")
    res = _reserved(cat)
    for priority, waits in ((Priority.HIGH, True), (Priority.REALTIME, False)):
        jobs = [
            job(0, H, spot=False, priority=Priority.HIGH, name="a"),
            job(5, 4 * H, 3.0, name="long-spot-ok"),  # later work: waiting stretches nothing
            job(10, H, 3.0, spot=False, priority=priority, name="b"),
        ]
        out = replay(Hybrid(), jobs, cat=cat, reserved={res.capacity_key: (res, 1)})
        b = next(r for r in out.runs if r.job.job_id == "b")
        assert b.finish <= b.job.deadline_s
        if waits:
            assert b.seconds_by_option == {"reserved": H} and b.finish == pytest.approx(2 * H)
        else:
            assert b.cost_by_option == {"on-demand": pytest.approx(OD)}


def test_hybrid_takes_the_cheapest_idle_reservation_that_fits() -> None:
    def shaped(option: PurchaseOption, price: float, gpus: int) -> Offer:
        return Offer(cloud="aws", region="us-east-1", zone=None, instance_type=f"g.{gpus}x",
                     vcpus=4 * gpus, memory_gib=16 * gpus, gpu_type="T4", gpu_count=gpus,
                     option=option, usd_per_hour=price * gpus, ondemand_usd_per_hour=OD * gpus,
                     interruption_band=None)  # fmt: skip

    # The two-GPU host is listed first, as GCP's n1-highmem-16+2xP4 is before the 8+1xP4.
    cat = Catalog(
        shaped(option, price, gpus)
        for gpus in (2, 1)
        for option, price in ((PurchaseOption.ON_DEMAND, OD), (PurchaseOption.RESERVED, RES))
    )
    big, small = _reserved(cat, "g.2x"), _reserved(cat, "g.1x")
    one = job(0, H, spot=False, priority=Priority.REALTIME, name="one-gpu")
    two_needs = replace(one.needs, gpus=2)
    two = Job("two-gpu", 10, H, 10 + H, "test", two_needs)
    out = replay(Hybrid(), [one, two], cat=cat,
                 reserved={big.capacity_key: (big, 1), small.capacity_key: (small, 1)})  # fmt: skip
    # each on its own reservation, charged its amortised rate (the 1-GPU one on the 1-GPU host)
    assert sorted(r.cost for r in out.runs) == pytest.approx([RES, 2 * RES])
    assert all(set(r.cost_by_option) == {"reserved"} for r in out.runs)
    assert out.reserved_busy_s == 2 * H


def test_the_bound_pays_minimum_bills_and_reservations_for_the_whole_replay() -> None:
    # Ten 20-s requests an hour apart: a reservation held for 9 h to save ten minimum bills
    # never pays, so nothing can beat on-demand with its 60-s minimum.
    jobs = [job(i * H, 20.0, 1.5, spot=False, priority=Priority.REALTIME, name=f"r{i}")
            for i in range(10)]  # fmt: skip
    comparison = compare_policies(jobs, ["on-demand", "hybrid"], catalog=catalog("us-east-1"),
                                  config=CONFIG, spot=world(GAP), plan=False)  # fmt: skip
    bound = comparison.bound
    assert bound.per_second_total == pytest.approx(10 * 20 * RES / H)
    assert bound.held_total == pytest.approx(10 * 60 * OD / H)
    assert bound.total == bound.held_total
    for result in comparison.results:
        assert result.cost == pytest.approx(bound.total)


def test_the_gap_breakdown_adds_up_to_cost_minus_bound() -> None:
    cat = catalog("us-east-1")
    res = _reserved(cat)
    jobs = [job(i * 900.0, H * (1 + i % 3), (1.2, 1.5, 3.0)[i % 3], spot=i % 2 == 0,
                checkpointable=i % 4 != 1, priority=Priority.HIGH, name=f"j{i}")
            for i in range(12)] + [job(4 * H, 20.0, 1.5, spot=False, name="short")]  # fmt: skip
    comparison = compare_policies(
        jobs, ["uniform-progress", "hybrid"], catalog=cat, config=CONFIG, spot=world(GAP),
        reserved={res.capacity_key: (res, 2)}, breakdown=["uniform-progress", "hybrid"],
    )  # fmt: skip
    for result in comparison.results:
        parts = comparison.gaps[result.policy]
        assert sum(parts.values()) == pytest.approx(result.cost - comparison.bound.total)
        assert parts["minimum 60-s bills"] >= 0 and parts["change-overs and lost work"] >= 0
    assert comparison.gaps["hybrid"]["reservation idle"] > 0


def test_hybrid_restarts_on_spot_only_with_two_change_overs_of_slack() -> None:
    # Preempted at 300 s with 300 s of slack: a restart on us-west-2 spot would spend one
    # change-over, lose that spot at 600 s and miss; the hybrid finishes on on-demand.
    cat = catalog("us-east-1", "us-west-2", spot_prices=(0.2, 0.3))
    spot = world({"us-east-1": [(0.0, 300.0)], "us-west-2": [(0.0, 600.0)]})
    (run,) = replay(Hybrid(), [job(0, 1000.0, 1.3)], spot=spot, cat=cat).runs
    assert run.finish <= run.job.deadline_s
    assert run.seconds_by_option["spot"] == pytest.approx(300.0)
