"""Capacity plan MILP: hand-checkable optima, binding constraints in words, replay."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.planning import demand_from_forecast, plan_capacity, replay_plan
from prefect_cloudsched.core.planning.candidates import risk_weight
from prefect_cloudsched.core.records import to_micro
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.testing.offers import make_offer

OD, SPOT, RES = PurchaseOption.ON_DEMAND, PurchaseOption.SPOT, PurchaseOption.RESERVED


def offer(name: str, option: PurchaseOption, price: float, **kw: Any) -> Offer:
    return make_offer(name, option, price, **{"band": "<5%", "region": "r1", "gpu": "A100", **kw})


def one_gpu_catalog(spot: float = 0.3, band: str = "<5%") -> Catalog:
    return Catalog(
        [
            offer("g1.x", OD, 1.0),
            offer("g1.x", RES, 0.6, od=1.0),
            offer("g1.x", SPOT, spot, od=1.0, band=band),
        ]
    )


def supplied(plan, catalog: Catalog, hour: int, gpu: str = "A100") -> float:
    """GPUs of ``gpu`` that the plan holds in ``hour`` (reserved + on-demand + spot)."""
    total = 0.0
    for item in plan.reserved:
        found = catalog.find(item.offer_key)
        total += found.gpu_count * item.count if found.gpu_type == gpu else 0
    for mix in (plan.ondemand[hour], plan.spot[hour]):
        for key, count in mix.items():
            found = catalog.find(key)
            total += found.gpu_count * count if found.gpu_type == gpu else 0
    return total


def test_flat_demand_reserves_when_reserved_is_cheaper() -> None:
    plan = plan_capacity({"gpu:A100": [2.0] * 10}, one_gpu_catalog(), spot_max_share=0)
    assert plan.status == "optimal"
    assert plan.reserved_capacity() == {"aws/r1/g1.x": 2}
    assert plan.expected_cost == pytest.approx(2 * 0.6 * 10)
    assert plan.ondemand_cost == pytest.approx(2 * 1.0 * 10)
    assert plan.saving == pytest.approx(8.0)
    assert all(not mix for mix in plan.ondemand)


def test_a_one_hour_peak_is_not_worth_a_reservation() -> None:
    plan = plan_capacity({"gpu:A100": [2.0] + [0.0] * 9}, one_gpu_catalog(), spot_max_share=0)
    assert plan.reserved == []
    assert plan.ondemand[0] == {"aws/r1/g1.x/on-demand": 2}
    assert plan.expected_cost == pytest.approx(2.0)


def test_reservation_breaks_even_at_its_price_ratio() -> None:
    # Reserved at 0.6/h pays off for a base load present in more than 60 % of hours.
    busy7 = plan_capacity({"gpu:A100": [1.0] * 7 + [0.0] * 3}, one_gpu_catalog(), spot_max_share=0)
    busy5 = plan_capacity({"gpu:A100": [1.0] * 5 + [0.0] * 5}, one_gpu_catalog(), spot_max_share=0)
    assert busy7.reserved_capacity() == {"aws/r1/g1.x": 1}
    assert busy5.reserved_capacity() == {}


def test_spot_cap_forces_at_least_half_on_demand_or_reserved() -> None:
    catalog = one_gpu_catalog(spot=0.1)
    plan = plan_capacity({"gpu:A100": [1.0, 4.0, 4.0, 2.0]}, catalog, spot_max_share=0.5)
    demand = [1.0, 4.0, 4.0, 2.0]
    for hour, need in enumerate(demand):
        spot_gpus = sum(plan.spot[hour].values())
        assert spot_gpus <= 0.5 * need
        assert supplied(plan, catalog, hour) - spot_gpus >= need - spot_gpus
        assert supplied(plan, catalog, hour) >= need
    assert sum(sum(m.values()) for m in plan.spot) == 0 + 2 + 2 + 1  # spot is cheapest


def test_worse_interruption_band_uses_the_cap_faster() -> None:
    assert risk_weight(offer("g", SPOT, 0.1, band="<5%")) == 1.0
    assert risk_weight(offer("g", SPOT, 0.1, band=">20%")) == pytest.approx(0.25 / 0.075)
    plan = plan_capacity(
        {"gpu:A100": [4.0] * 3}, one_gpu_catalog(spot=0.1, band=">20%"), spot_max_share=0.5
    )
    # 0.5 × 4 GPUs / 3.33 per risky GPU → at most 0 whole spot GPUs.
    assert all(not mix for mix in plan.spot)


def test_budget_too_small_is_infeasible_and_names_the_budget() -> None:
    plan = plan_capacity(
        {"gpu:A100": [2.0] * 10}, one_gpu_catalog(), spot_max_share=0, budget_usd=5.0
    )
    assert plan.status == "infeasible"
    assert len(plan.binding) == 1
    assert "budget $5.00" in plan.binding[0]
    assert "$7.00 short" in plan.binding[0]  # cheapest plan costs 12
    assert plan.reserved == []


def test_budget_that_suffices_is_respected() -> None:
    plan = plan_capacity(
        {"gpu:A100": [2.0] * 10}, one_gpu_catalog(), spot_max_share=0, budget_usd=12.0
    )
    assert plan.status == "optimal"
    assert plan.expected_cost <= 12.0 + 1e-6


def test_quota_too_small_is_infeasible_and_names_the_quota() -> None:
    plan = plan_capacity(
        {"gpu:A100": [2.0] * 5},
        one_gpu_catalog(),
        spot_max_share=0,
        quotas={"aws/r1": 8},  # vCPUs: one 8-vCPU instance, two needed
    )
    assert plan.status == "infeasible"
    assert any("quota aws/r1 (8 vCPUs)" in line for line in plan.binding)
    assert not any("budget" in line for line in plan.binding)


def test_gpu_quota_moves_the_rest_to_another_region() -> None:
    catalog = Catalog(
        [
            offer("g1.x", OD, 1.0, region="r1"),
            offer("g1.x", OD, 1.5, region="r2"),
        ]
    )
    plan = plan_capacity(
        {"gpu:A100": [3.0] * 2}, catalog, spot_max_share=0, quotas={"aws/r1/gpu:A100": 2}
    )
    assert plan.status == "optimal"
    assert plan.ondemand[0] == {"aws/r1/g1.x/on-demand": 2, "aws/r2/g1.x/on-demand": 1}
    assert plan.expected_cost == pytest.approx(2 * 3.5)


def test_small_demand_is_not_forced_onto_a_big_machine() -> None:
    catalog = Catalog(
        [offer("big.8x", OD, 6.0, gpus=8), offer("small.1x", OD, 1.0, gpus=1)]
        + [offer(f"big{i}.8x", OD, 6.0 + i / 10, gpus=8) for i in range(1, 6)],
    )
    plan = plan_capacity({"gpu:A100": [1.0, 8.0]}, catalog, spot_max_share=0, max_candidates=1)
    assert plan.ondemand[0] == {"aws/r1/small.1x/on-demand": 1}
    assert plan.ondemand[1] == {"aws/r1/big.8x/on-demand": 1}


def test_fractional_demand_is_covered_with_whole_gpus() -> None:
    catalog = one_gpu_catalog()
    plan = plan_capacity({"gpu:A100": [2.3, 0.4]}, catalog, spot_max_share=0)
    assert [supplied(plan, catalog, h) for h in (0, 1)] == [3, 1]


def test_cpu_demand_is_served_by_cpu_instances_only() -> None:
    catalog = Catalog(
        [
            offer("c.4x", OD, 0.2, gpus=0, gpu=None),
            offer("g1.x", OD, 0.1),  # cheaper per vCPU but a GPU machine
        ]
    )
    plan = plan_capacity({"vcpu": [16.0], "memory_gib": [40.0]}, catalog, spot_max_share=0)
    assert plan.ondemand[0] == {"aws/r1/c.4x/on-demand": 2}  # 16 vCPU, 64 GiB


def test_carbon_price_moves_work_to_the_cleaner_region() -> None:
    catalog = Catalog(
        [offer("g1.x", OD, 1.0, region="dirty"), offer("g1.x", OD, 1.0, region="clean")]
    )
    kwargs = dict(
        spot_max_share=0,
        carbon_intensity={"dirty": 800.0, "clean": 50.0},
        power_kw=lambda _offer: 0.5,
    )
    plan = plan_capacity({"gpu:A100": [1.0] * 4}, catalog, carbon_usd_per_tonne=200.0, **kwargs)
    assert set(plan.ondemand[0]) == {"aws/clean/g1.x/on-demand"}
    assert plan.expected_cost == pytest.approx(4.0)  # USD only; carbon reported apart
    assert plan.carbon_tonnes == pytest.approx(4 * 0.5 * 50.0 / 1e6)


def test_highs_finds_the_same_optimum_as_cbc() -> None:
    demand = {"gpu:A100": [1.0, 3.0, 2.0, 5.0, 0.0, 2.0]}
    cbc = plan_capacity(demand, one_gpu_catalog(), spot_max_share=0.5, gap=0)
    highs = plan_capacity(demand, one_gpu_catalog(), spot_max_share=0.5, gap=0, solver="highs")
    assert highs.status == "optimal"
    assert highs.expected_cost == pytest.approx(cbc.expected_cost)


def test_plan_json_is_what_the_runner_and_ledger_read(tmp_path) -> None:
    plan = plan_capacity({"gpu:A100": [2.0] * 10}, one_gpu_catalog(), spot_max_share=0)
    data = json.loads(json.dumps(plan.to_dict()))
    for key in ("expected_cost", "ondemand_cost", "reserved", "solve_seconds", "status"):
        assert key in data
    assert data["reserved"] == [
        {
            "capacity_key": "aws/r1/g1.x",
            "offer_key": "aws/r1/g1.x/reserved",
            "count": 2,
            "usd_per_hour": 0.6,
            "gpu_type": "A100",
            "gpu_count": 1,
        }
    ]
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    plan_id = ledger.record_plan(
        name="test",
        status=plan.status,
        expected_micro=to_micro(plan.expected_cost),
        ondemand_micro=to_micro(plan.ondemand_cost),
        plan=plan.to_dict(),
    )
    stored = ledger.latest_plan()
    assert stored is not None and stored["id"] == plan_id
    assert [(r["capacity_key"], r["count"]) for r in stored["reserved"]] == [("aws/r1/g1.x", 2)]


FRAME = pd.DataFrame(
    {
        "point": [10.0, 0.0],
        "lo80": [8.0, 0.0],
        "hi80": [12.0, 1.0],
        "lo95": [6.0, 0.0],
        "hi95": [14.0, 2.0],
    }
)


def test_demand_from_forecast_uses_known_quantiles_exactly() -> None:
    assert demand_from_forecast(FRAME, 0.5) == [10.0, 0.0]
    assert demand_from_forecast(FRAME, 0.9) == [12.0, 1.0]
    assert demand_from_forecast(FRAME, 0.975) == [14.0, 2.0]
    between = demand_from_forecast(FRAME, 0.95)
    assert 12.0 < between[0] < 14.0
    beyond = demand_from_forecast(FRAME, 0.99)
    assert beyond[0] > 14.0
    quantile_table = pd.DataFrame({0.5: [3.0], 0.9: [5.0]})
    assert demand_from_forecast(quantile_table, 0.9) == [5.0]


@given(st.floats(0.02, 0.98), st.floats(0.02, 0.98))
@settings(max_examples=30, deadline=None)
def test_demand_from_forecast_grows_with_the_service_level(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert all(
        x <= y + 1e-9
        for x, y in zip(
            demand_from_forecast(FRAME, low), demand_from_forecast(FRAME, high), strict=True
        )
    )


def test_a_forecast_in_the_demand_is_taken_at_the_service_level() -> None:
    frame = pd.DataFrame({"point": [1.0] * 4, "hi80": [2.0] * 4, "hi95": [3.0] * 4})
    plan = plan_capacity({"gpu:A100": frame}, one_gpu_catalog(), spot_max_share=0)
    assert plan.service_level == 0.9
    assert plan.demand == {"gpu:A100": [2.0] * 4}


@pytest.mark.parametrize(
    ("demand", "kwargs", "fragment"),
    [
        ({"gpu:Z999": [1.0]}, {}, "known: A100"),
        ({"gpu:A100": [1.0, -1.0]}, {}, ">= 0"),
        ({"gpu:A100": [1.0, math.nan]}, {}, "finite"),
        ({"gpu:A100": []}, {}, "non-empty"),
        ({"gpu:A100": [1.0], "vcpu": [1.0, 2.0]}, {}, "same length"),
        ({"disk": [1.0]}, {}, "unknown"),
        ({}, {}, "empty"),
        ({"gpu:A100": [1.0]}, {"quotas": {"aws": 1}}, "cloud/region"),
        ({"gpu:A100": [1.0]}, {"quotas": {"aws/mars-1": 1}}, "not a region"),
        ({"gpu:A100": [1.0]}, {"solver": "gurobi"}, "cbc, highs"),
        ({"gpu:A100": [1.0]}, {"spot_max_share": 1.5}, "spot_max_share"),
        ({"gpu:A100": [1.0]}, {"budget_usd": -1.0}, "budget"),
    ],
)
def test_bad_input_is_one_clear_error(demand, kwargs, fragment) -> None:
    with pytest.raises(InputError, match=fragment):
        plan_capacity(demand, one_gpu_catalog(), **kwargs)


def test_no_offer_in_the_allowed_regions_says_so() -> None:
    plan = plan_capacity({"gpu:A100": [1.0]}, one_gpu_catalog(), regions=["elsewhere"])
    assert plan.status == "infeasible"
    assert "gpu:A100" in plan.binding[0] and "widen" in plan.binding[0]


def test_replay_pays_reservations_every_hour_and_buys_the_rest() -> None:
    result = replay_plan(
        {"aws/r1/g1.x": 2}, {"gpu:A100": [3.0] * 5 + [1.0] * 5}, one_gpu_catalog(), spot_max_share=0
    )
    assert result.reserved_cost == pytest.approx(2 * 0.6 * 10)
    assert result.ondemand_cost == pytest.approx(5 * 1.0)
    assert result.cost == pytest.approx(17.0)
    assert result.unmet_hours == []
    assert result.reserved_utilization["gpu:A100"] == pytest.approx((5 * 2 + 5 * 1) / 20)


def test_replay_reports_hours_it_cannot_cover() -> None:
    result = replay_plan(
        {},
        {"gpu:A100": [1.0, 3.0, 1.0]},
        one_gpu_catalog(),
        spot_max_share=0,
        quotas={"aws/r1/gpu:A100": 2},
    )
    assert result.unmet_hours == [1]
    assert result.unmet_units == pytest.approx(1.0)


def test_replay_rejects_a_reservation_the_catalog_lacks() -> None:
    with pytest.raises(InputError, match="no reserved offer"):
        replay_plan({"aws/r1/nope": 1}, {"gpu:A100": [1.0]}, one_gpu_catalog())


@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=12),
    st.sampled_from([0.0, 0.5, 1.0]),
)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_plan_covers_every_hour_and_never_costs_more_than_on_demand(
    demand: list[int], share: float
) -> None:
    catalog = Catalog(
        [
            *one_gpu_catalog().offers,
            offer("g4.x", OD, 3.6, gpus=4),
            offer("g4.x", RES, 2.4, gpus=4, od=3.6),
        ]
    )
    plan = plan_capacity({"gpu:A100": [float(d) for d in demand]}, catalog, spot_max_share=share)
    assert plan.status in ("optimal", "feasible")
    assert 0 <= plan.expected_cost <= plan.ondemand_cost + 1e-6
    for hour, need in enumerate(demand):
        assert supplied(plan, catalog, hour) >= need
        assert sum(plan.spot[hour].values()) <= share * need + 1e-9
    replay = replay_plan(plan, {"gpu:A100": [float(d) for d in demand]}, catalog, gap=0,
                         spot_max_share=share)  # fmt: skip
    assert replay.cost <= plan.expected_cost * 1.01 + 1e-6


def test_replay_picks_the_reserved_offer_of_the_right_gpu_on_shared_n1_hosts() -> None:
    # GCP N1 hosts with different attached GPUs share a machine type; their keys (Offer.shape)
    # name the GPUs, so a reservation of one never resolves to the other.
    def n1(gpu: str, price: float) -> Offer:
        return Offer("gcp", "r1", "r1-a", "n1-standard-8", 8, 30.0, gpu, 1, RES, price, 1.0)

    catalog = Catalog([n1("T4", 0.2), n1("A100", 0.6), offer("g1.x", OD, 1.0)])
    plan = plan_capacity({"gpu:A100": [1.0] * 4}, catalog, spot_max_share=0)
    assert plan.reserved[0].gpu_type == "A100"
    assert plan.reserved[0].capacity_key == "gcp/r1-a/n1-standard-8+1xA100"
    result = replay_plan(plan, {"gpu:A100": [1.0] * 4}, catalog, spot_max_share=0)
    assert result.cost == pytest.approx(0.6 * 4)
    assert result.reserved_utilization["gpu:A100"] == pytest.approx(1.0)
    by_demand = replay_plan({"gcp/r1-a/n1-standard-8+1xA100": 1}, {"gpu:A100": [1.0] * 4}, catalog)
    assert by_demand.ondemand_cost == 0.0


def _random_catalog(rng) -> Catalog:
    """Two regions, two GPU models, sizes 1/2/4/8, all three options at random prices."""
    offers = []
    for region in ("r1", "r2"):
        for gpu in ("A100", "V100"):
            for gpus in (1, 2, 4, 8):
                od = gpus * rng.uniform(0.8, 1.2)
                name = f"{gpu.lower()}.{gpus}x"
                offers.append(offer(name, OD, od, gpus=gpus, gpu=gpu, region=region))
                offers.append(
                    offer(name, RES, od * rng.uniform(0.5, 0.8), gpus=gpus, gpu=gpu,
                          region=region, od=od)
                )  # fmt: skip
                band = rng.choice(["<5%", "10-15%", ">20%"])
                offers.append(
                    offer(name, SPOT, od * rng.uniform(0.2, 0.5), gpus=gpus, gpu=gpu,
                          region=region, od=od, band=band)
                )  # fmt: skip
    return Catalog(offers)


@pytest.mark.parametrize("seed", range(6))
def test_staged_solve_reaches_the_direct_optimum_within_the_gap(monkeypatch, seed) -> None:
    # The staged route (LP bound, rounded reservations and hours, then the warm-started
    # MILP) only runs on large programs; forced on small random ones it must land within
    # the requested gap of the optimum that a direct solve proves at gap 0.
    import random

    from prefect_cloudsched.core.planning import program

    rng = random.Random(seed)
    catalog = _random_catalog(rng)
    hours = 36
    demand = {
        "gpu:A100": [rng.choice([0, 3, 5, 9, 12, 17]) + rng.random() for _ in range(hours)],
        "gpu:V100": [rng.choice([1, 2, 6, 10]) * 1.0 for _ in range(hours)],
    }
    quotas = {"aws/r1": 1e6, "aws/r2/gpu:V100": 24}  # couples the classes in r1
    kwargs = dict(spot_max_share=0.5, quotas=quotas, max_candidates=2, time_limit_s=60)
    direct = plan_capacity(demand, catalog, gap=0.0, **kwargs)
    monkeypatch.setattr(program, "STAGED_MIN_HOURLY_VARS", 0)
    staged = plan_capacity(demand, catalog, gap=0.01, **kwargs)
    assert direct.status == staged.status == "optimal"
    assert staged.stages[0].startswith("lp ")
    assert staged.expected_cost >= direct.expected_cost - 1e-6
    assert staged.expected_cost <= direct.expected_cost / (1 - 0.01) + 1e-6
    for h in range(hours):
        for gpu in ("A100", "V100"):
            assert supplied(staged, catalog, h, gpu) >= math.ceil(demand[f"gpu:{gpu}"][h] - 1e-6)


def test_staged_solve_with_a_budget_that_rounding_breaks_still_finds_the_optimum(
    monkeypatch,
) -> None:
    # A budget just above the optimum: rounded reservations may overshoot it; the staged
    # solve must then fall through to the full MILP rather than report infeasible.
    from prefect_cloudsched.core.planning import program

    demand = {"gpu:A100": [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 4.0, 4.0, 1.0]}
    direct = plan_capacity(demand, one_gpu_catalog(), spot_max_share=0.5, gap=0.0)
    monkeypatch.setattr(program, "STAGED_MIN_HOURLY_VARS", 0)
    staged = plan_capacity(
        demand, one_gpu_catalog(), spot_max_share=0.5, gap=0.0,
        budget_usd=direct.expected_cost + 0.01,
    )  # fmt: skip
    assert staged.status == "optimal"
    assert staged.expected_cost == pytest.approx(direct.expected_cost, abs=1e-6)
    assert staged.expected_cost == pytest.approx(11.30, abs=0.01)


def test_staged_solve_stops_at_the_lp_bound_when_rounding_is_exact(monkeypatch) -> None:
    # Flat demand, no spot: the LP optimum is integral (two reservations), so the rounded
    # incumbent meets the LP bound and no MILP is run at all.
    from prefect_cloudsched.core.planning import program

    monkeypatch.setattr(program, "STAGED_MIN_HOURLY_VARS", 0)
    plan = plan_capacity({"gpu:A100": [2.0] * 10}, one_gpu_catalog(), spot_max_share=0)
    assert plan.status == "optimal"
    assert [s.split()[0] for s in plan.stages] == ["lp", "round"]
    assert plan.lp_gap == pytest.approx(0.0, abs=1e-9)
    assert plan.reserved_capacity() == {"aws/r1/g1.x": 2}
    assert plan.expected_cost == pytest.approx(0.6 * 2 * 10)


@pytest.mark.parametrize("seed", range(4))
def test_spot_cap_and_quota_bounds_on_hourly_counts_keep_the_optimum(monkeypatch, seed) -> None:
    # _cap_bound caps each hourly count at what the spot cap or a quota allows for that offer
    # alone. It must cut off no integer plan: the optimum with and without it is the same.
    import random

    from prefect_cloudsched.core.planning import program

    rng = random.Random(100 + seed)
    catalog = _random_catalog(rng)
    demand = {
        "gpu:A100": [rng.choice([1, 2, 3, 7, 9, 15]) * 1.0 for _ in range(24)],
        "gpu:V100": [rng.choice([0, 1, 4, 5]) * 1.0 for _ in range(24)],
    }
    kwargs = dict(spot_max_share=0.4, quotas={"aws/r1/gpu:A100": 6}, max_candidates=3, gap=0.0)
    bounded = plan_capacity(demand, catalog, **kwargs)
    monkeypatch.setattr(program, "_cap_bound", lambda *_: 2**31)
    unbounded = plan_capacity(demand, catalog, **kwargs)
    assert bounded.status == unbounded.status == "optimal"
    assert bounded.expected_cost == pytest.approx(unbounded.expected_cost, rel=1e-9, abs=1e-6)


def test_plan_json_cost_parts_add_up_to_the_expected_cost() -> None:
    # `ondemand_cost` is the all-on-demand baseline; the parts had no on-demand figure
    from prefect_cloudsched.core.catalog import load_catalog

    plan = plan_capacity({"gpu:A100": [2, 2, 2, 2, 2, 2, 2, 4, 4, 1]}, load_catalog(),
                         spot_max_share=0.5)  # fmt: skip
    data = plan.to_dict()
    parts = data["reserved_cost"] + data["ondemand_part_cost"] + data["spot_cost"]
    assert parts == pytest.approx(data["expected_cost"], abs=2e-6)
    assert data["ondemand_part_cost"] > 0 and data["ondemand_cost"] > data["expected_cost"]
