"""Catalog loading and the pure placement decision."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_cloudsched.core.catalog import (
    Catalog,
    Offer,
    PurchaseOption,
    band_hazard_per_hour,
    load_catalog,
)
from prefect_cloudsched.core.needs import KNOWN_GPU_TYPES, Priority, TaskNeeds
from prefect_cloudsched.core.policy import (
    PlacementState,
    PolicyConfig,
    decide,
    spot_expected_cost,
    spot_slack_needed,
)
from prefect_cloudsched.errors import InputError, NoFeasibleOffer
from prefect_cloudsched.testing.offers import make_offer

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
OD, SPOT, RES = PurchaseOption.ON_DEMAND, PurchaseOption.SPOT, PurchaseOption.RESERVED


def offer(itype: str, option: PurchaseOption, price: float, od: float, **kw: Any) -> Offer:
    return make_offer(itype, option, price, od=od, **{"vcpus": 8, "mem": 32, **kw})


@pytest.fixture
def small() -> Catalog:
    return Catalog(
        [
            offer("g5.xlarge", OD, 1.0, 1.0),
            offer("g5.xlarge", SPOT, 0.3, 1.0),
            offer("g5.xlarge", RES, 0.6, 1.0),
            offer("g5.xlarge", OD, 1.2, 1.2, region="eu-west-1"),
            offer("g5.12xlarge", OD, 5.0, 5.0, gpus=4, vcpus=48, mem=192),
            offer("m5.large", OD, 0.1, 0.1, gpus=0, vcpus=2, mem=8),
            offer("g2-standard-4", OD, 0.7, 0.7, gpu="L4", cloud="gcp", region="us-central1"),
        ]
    )


def test_shipped_catalog_shape_and_provenance() -> None:
    catalog = load_catalog()
    assert len(catalog) > 5000
    assert set(catalog.clouds) == {"aws", "gcp"}
    assert set(catalog.gpu_types) <= set(KNOWN_GPU_TYPES)
    for o in catalog.offers:
        assert 0 < o.usd_per_hour <= o.ondemand_usd_per_hour + 1e-9
        if o.option is SPOT:
            assert o.interruption_band is not None
    options = {o.option for o in catalog.offers}
    assert options == {OD, SPOT, RES}
    from importlib import resources

    source = resources.files("prefect_cloudsched.core.catalog") / "data" / "SOURCE.md"
    assert "instances.csv" in source.read_text()


def test_catalog_rejects_bad_rows(tmp_path) -> None:
    bad = tmp_path / "c.csv"
    bad.write_text(
        "cloud,region,zone,instance_type,vcpus,memory_gib,ondemand_usd_per_hour\n"
        "aws,us-east-1,,m5.large,two,8,0.1\n"
    )
    with pytest.raises(InputError, match="line 2: column vcpus='two' is not a number"):
        load_catalog(bad)
    bad.write_text(
        "cloud,region,zone,instance_type,vcpus,memory_gib,ondemand_usd_per_hour,spot_usd_per_hour\n"
        "aws,us-east-1,,m5.large,2,8,0.1,cheap\n"
    )
    with pytest.raises(InputError, match="column spot_usd_per_hour='cheap' is not a number"):
        load_catalog(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_catalog(tmp_path / "missing.csv")


def test_offer_keys_are_unique_and_name_attached_gpus() -> None:
    catalog = load_catalog()
    keys = [o.key for o in catalog.offers]
    assert len(set(keys)) == len(keys)
    n1 = [o for o in catalog.offers if o.instance_type.startswith("n1-") and o.gpu_count]
    assert n1, "the snapshot should carry GCP N1 hosts with attached GPUs"
    for o in n1[:50]:
        assert o.shape == f"{o.instance_type}+{o.gpu_count}x{o.gpu_type}"
        assert catalog.find(o.key) == o
    g5 = offer("g5.xlarge", OD, 1.0, 1.0)
    assert g5.key == "aws/us-east-1/g5.xlarge/on-demand"


def test_baseline_without_on_demand_rows_uses_list_price() -> None:
    spot_only = Catalog([offer("g5.xlarge", SPOT, 0.3, 1.0), offer("g5.2xlarge", SPOT, 0.5, 1.4)])
    needs = TaskNeeds(gpus=1, est_runtime=timedelta(hours=2), spot_ok=True)
    decision = decide(needs, spot_only, now=NOW)
    assert decision.offer.option is SPOT
    assert decision.baseline_offer.instance_type == "g5.xlarge"
    assert decision.baseline_cost == pytest.approx(2.0)


def test_band_hazard_matches_monthly_midpoint() -> None:
    lam = band_hazard_per_hour("<5%")
    assert math.isclose(1 - math.exp(-lam * 730), 0.025)
    assert band_hazard_per_hour(None) == 0.0


def one_hour_on_an_a10g(deadline: timedelta, **more: bool) -> TaskNeeds:
    """A 1-hour, spot-tolerant task on one A10G, with ``deadline`` from submission."""
    return TaskNeeds(
        gpus=1, gpu_type="A10G", est_runtime=timedelta(hours=1), deadline=deadline, spot_ok=True,
        **more,
    )  # fmt: skip


def test_spot_chosen_with_slack_and_explained(small: Catalog) -> None:
    d = decide(one_hour_on_an_a10g(timedelta(hours=4)), small, now=NOW)
    assert d.offer.option is SPOT and d.offer.instance_type == "g5.xlarge"
    assert d.baseline_offer.option is OD and d.baseline_cost == pytest.approx(1.0)
    assert 0.3 < d.expected_cost < 0.31  # risk adds a little on top of 0.3
    assert d.runner_up is not None and d.runner_up.option is OD
    assert "chose aws us-east-1 g5.xlarge" in d.explanation()
    assert d.tag == "cloudsched:aws-spot"


def test_spot_excluded_when_slack_cannot_absorb_a_loss(small: Catalog) -> None:
    d = decide(one_hour_on_an_a10g(timedelta(hours=1, minutes=30)), small, now=NOW)
    assert d.offer.option is OD
    assert any("spot excluded" in r for r in d.reasons)
    ckpt = one_hour_on_an_a10g(timedelta(hours=1, minutes=40), checkpointable=True)
    assert decide(ckpt, small, now=NOW).offer.option is SPOT  # half a run lost at worst


def test_realtime_and_not_spot_ok_never_spot(small: Catalog) -> None:
    for needs in (
        TaskNeeds(gpus=1, spot_ok=False),
        TaskNeeds(gpus=1, spot_ok=True, priority=Priority.REALTIME),
    ):
        assert decide(needs, small, now=NOW).offer.option is not SPOT


def test_reserved_capacity_used_first_and_only_when_idle(small: Catalog) -> None:
    needs = TaskNeeds(gpus=1, gpu_type="A10G", spot_ok=True)
    state = PlacementState(reserved_free={"aws/us-east-1/g5.xlarge": 1})
    d = decide(needs, small, now=NOW, state=state)
    # Ranked at its marginal 0 (the commitment is paid anyway), but expected at the
    # amortised rate its ledger row will be charged: 0.6/h × the 10-min default estimate.
    assert d.offer.option is RES and d.marginal_cost == 0.0
    assert d.expected_cost == pytest.approx(0.6 * d.needs.est_runtime.total_seconds() / 3600)
    assert "commitment is paid whether used or not" in d.explanation()
    assert state.take_reserved("aws/us-east-1/g5.xlarge")
    assert not state.take_reserved("aws/us-east-1/g5.xlarge")
    assert decide(needs, small, now=NOW, state=state).offer.option is SPOT


def test_cpu_task_never_lands_on_gpu_instance(small: Catalog) -> None:
    d = decide(TaskNeeds(cpus=2, memory_gib=4), small, now=NOW)
    assert d.offer.instance_type == "m5.large"


def test_egress_moves_choice_to_the_data_region(small: Catalog) -> None:
    cheap_far = decide(TaskNeeds(gpus=1, gpu_type="A10G"), small, now=NOW)
    assert cheap_far.offer.region == "us-east-1"
    near_data = TaskNeeds(gpus=1, gpu_type="A10G", data_region="eu-west-1", input_gib=100)
    assert decide(near_data, small, now=NOW).offer.region == "eu-west-1"  # 0.2 < 100*0.02


def test_blocked_offers_and_interruptions_change_the_choice(small: Catalog) -> None:
    needs = TaskNeeds(gpus=1, gpu_type="A10G", spot_ok=True, est_runtime=timedelta(hours=1))
    state = PlacementState()
    state.block("aws/us-east-1/g5.xlarge/spot", "InsufficientInstanceCapacity")
    d = decide(needs, small, now=NOW, state=state)
    assert d.offer.key == "aws/us-east-1/g5.xlarge/on-demand"
    assert any("blocked" in r for r in d.reasons)
    calm, stormy = PlacementState(), PlacementState()
    stormy.interruptions["aws/us-east-1/g5.xlarge"] += 50
    p_calm = decide(needs, small, now=NOW, state=calm).interruption_probability
    p_storm = decide(needs, small, now=NOW, state=stormy).interruption_probability
    assert p_storm > p_calm


def test_policy_filters_and_errors(small: Catalog) -> None:
    needs = TaskNeeds(gpus=1)
    gcp_only = decide(needs, small, now=NOW, config=PolicyConfig(allowed_clouds=frozenset({"gcp"})))
    assert gcp_only.offer.cloud == "gcp"
    with pytest.raises(NoFeasibleOffer, match="allowed_regions"):
        config = PolicyConfig(allowed_regions=frozenset({"af-south-1"}))  # a region, not here
        decide(needs, small, now=NOW, config=config)
    with pytest.raises(NoFeasibleOffer, match="largest instance has 4"):
        decide(TaskNeeds(gpus=8), small, now=NOW)
    with pytest.raises(NoFeasibleOffer, match="no offer has GPU type H100"):
        decide(TaskNeeds(gpus=1, gpu_type="H100"), small, now=NOW)
    with pytest.raises(NoFeasibleOffer, match="lower the needs"):
        decide(TaskNeeds(cpus=512), small, now=NOW)


def test_deadline_at_risk_is_reported_not_fatal(small: Catalog) -> None:
    needs = TaskNeeds(gpus=1, est_runtime=timedelta(hours=2), deadline=timedelta(minutes=30))
    d = decide(needs, small, now=NOW)
    assert d.offer.option is OD and any("deadline at risk" in r for r in d.reasons)


def test_spot_expected_cost_formula() -> None:
    import numpy as np

    cost, p = spot_expected_cost(np.array([0.3]), np.array([1.0]), np.array([0.1]), 2.0, False)
    p_expected = 1 - math.exp(-0.2)
    assert p[0] == pytest.approx(p_expected)
    assert cost[0] == pytest.approx((1 - p_expected) * 0.6 + p_expected * (0.3 + 2.0))
    assert spot_slack_needed(
        TaskNeeds(est_runtime=timedelta(hours=1)), timedelta(minutes=5)
    ) == timedelta(hours=2, minutes=10)


@settings(max_examples=60, deadline=None)
@given(
    gpus=st.sampled_from([0, 1, 2, 4, 8]),
    cpus=st.sampled_from([1, 2, 8, 32]),
    spot=st.booleans(),
    hours=st.floats(0.05, 24),
    slack=st.floats(1.0, 5.0),
)
def test_decisions_on_shipped_catalog_are_sound(
    gpus: int, cpus: int, spot: bool, hours: float, slack: float
) -> None:
    runtime = timedelta(hours=hours)
    needs = TaskNeeds(
        gpus=gpus,
        cpus=cpus,
        memory_gib=cpus * 2,
        est_runtime=runtime,
        deadline=runtime * slack,
        spot_ok=spot,
    )
    d = decide(needs, load_catalog(), now=NOW)
    assert d.offer.gpu_count >= gpus and d.offer.vcpus >= cpus
    assert d.expected_cost >= 0 and d.baseline_cost >= 0
    assert d.offer.option is not RES  # no reserved capacity without a plan
    if not spot:
        assert d.offer.option is OD
    if d.offer.option is OD:
        assert d.expected_cost >= d.baseline_cost - 1e-9  # the baseline is the cheapest OD


def test_cheapest_idle_reservation_that_fits_is_taken() -> None:
    catalog = Catalog(
        [
            offer("g5.12xlarge", RES, 3.0, 5.0, gpus=4, vcpus=48, mem=192),
            offer("g5.xlarge", RES, 0.6, 1.0),
            offer("g5.xlarge", OD, 1.0, 1.0),
        ]
    )
    state = PlacementState(
        reserved_free={"aws/us-east-1/g5.12xlarge": 1, "aws/us-east-1/g5.xlarge": 1}
    )
    needs = TaskNeeds(gpus=1, gpu_type="A10G", est_runtime=timedelta(hours=1))
    for reserved_first in (True, False):
        config = PolicyConfig(reserved_first=reserved_first)
        chosen = decide(needs, catalog, now=NOW, state=state, config=config).offer
        assert chosen.key == "aws/us-east-1/g5.xlarge/reserved"
