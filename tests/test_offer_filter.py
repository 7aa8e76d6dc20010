"""The one offer filter: decide(), the packer and the simulator's bound obey the same policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_cloudsched.core.catalog import (
    BAND_ORDER,
    GCE_ACCELERATOR_TYPES,
    PurchaseOption,
    gpu_names,
    load_catalog,
)
from prefect_cloudsched.core.needs import KNOWN_GPU_TYPES, TaskNeeds
from prefect_cloudsched.core.planning.packing import PackTask, pack_tasks
from prefect_cloudsched.core.policy import PlacementState, PolicyConfig, decide
from prefect_cloudsched.core.policy.offer_filter import fitting, policy_allows
from prefect_cloudsched.errors import InputError, NoFeasibleOffer
from prefect_cloudsched.simulate.bound import fitting_offers

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
CATALOG = load_catalog()


def _allowed(offer, config: PolicyConfig) -> bool:
    """The policy, spelled out offer by offer (the filter does it with cached masks)."""
    return (
        (config.allowed_clouds is None or offer.cloud in config.allowed_clouds)
        and (config.allowed_regions is None or offer.region in config.allowed_regions)
        and (
            config.allowed_gpu_types is None
            or not offer.gpu_count
            or offer.gpu_type in config.allowed_gpu_types
        )
        and (config.max_usd_per_hour is None or offer.usd_per_hour <= config.max_usd_per_hour)
    )


configs = st.builds(
    PolicyConfig,
    allowed_clouds=st.none() | st.sampled_from([frozenset({"aws"}), frozenset({"gcp"})]),
    allowed_regions=st.none()
    | st.sampled_from([frozenset({"us-east-1"}), frozenset({"us-central1", "europe-west4"})]),
    allowed_gpu_types=st.none() | st.sampled_from([frozenset({"A10G", "L4"}), frozenset({"T4"})]),
    max_spot_band=st.none() | st.sampled_from(BAND_ORDER),
    max_usd_per_hour=st.none() | st.sampled_from([0.5, 3.0, 40.0]),
)
needs_ = st.builds(
    TaskNeeds,
    gpus=st.sampled_from([None, 1, 2]),  # None: 1 with a gpu_type, else 0
    gpu_type=st.sampled_from([None, "A10G", "L4", "T4"]),
    cpus=st.sampled_from([1, 4]),
    memory_gib=st.sampled_from([2, 16]),
    est_runtime=st.just(timedelta(hours=1)),
    spot_ok=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(needs=needs_, config=configs)
def test_decide_and_the_bound_see_the_same_feasible_offers(needs, config) -> None:
    expected = {
        o.key
        for o in CATALOG.offers
        if _allowed(o, config)
        and o.vcpus >= needs.cpus
        and o.memory_gib >= needs.memory_gib
        and (o.gpu_count >= needs.gpus if needs.gpus else o.gpu_count == 0)
        and (not needs.gpus or needs.gpu_type is None or o.gpu_type == needs.gpu_type)
    }
    assert {o.key for o in fitting_offers(needs, CATALOG, config)} == expected
    try:
        chosen = decide(needs, CATALOG, now=NOW, config=config).offer
    except NoFeasibleOffer:
        # only when no on-demand offer is feasible (spot may be ruled out, reserved is not idle)
        assert not any(k.endswith("/on-demand") for k in expected)
        return
    assert chosen.key in expected
    if chosen.option is PurchaseOption.SPOT and config.max_spot_band is not None:
        assert BAND_ORDER.index(chosen.interruption_band) <= BAND_ORDER.index(config.max_spot_band)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs)
def test_packed_instances_obey_the_policy_too(config) -> None:
    tasks = [
        PackTask(f"t{i}", TaskNeeds(gpus=1, est_runtime=timedelta(hours=2), spot_ok=True))
        for i in range(4)
    ]
    result = pack_tasks(tasks, CATALOG, now=NOW, config=config, time_limit_s=10)
    for packed in result.bins:
        assert _allowed(packed.offer, config), packed.offer.key
        if packed.offer.option is PurchaseOption.SPOT and config.max_spot_band is not None:
            band = packed.offer.interruption_band
            assert BAND_ORDER.index(band) <= BAND_ORDER.index(config.max_spot_band)


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (PolicyConfig(allowed_clouds=frozenset({"gcp"})), "widen allowed_clouds"),  # A10G: AWS
        (PolicyConfig(allowed_regions=frozenset({"af-south-1"})), "widen allowed_regions"),
        (PolicyConfig(allowed_gpu_types=frozenset({"T4"})), "widen allowed_gpu_types"),
        (PolicyConfig(max_usd_per_hour=0.0001), "raise max_usd_per_hour"),
    ],
)
def test_an_empty_policy_says_which_setting_to_widen(config: PolicyConfig, says: str) -> None:
    needs = TaskNeeds(gpus=1, gpu_type="A10G", est_runtime=timedelta(hours=1))
    with pytest.raises(NoFeasibleOffer, match=says):
        decide(needs, CATALOG, now=NOW, config=config)


def test_cpu_work_is_not_excluded_by_the_allowed_gpu_models() -> None:
    config = PolicyConfig(allowed_gpu_types=frozenset({"T4"}))
    decision = decide(TaskNeeds(cpus=2, est_runtime=timedelta(hours=1)), CATALOG, config=config)
    assert decision.offer.gpu_count == 0


def test_the_cached_policy_mask_is_shared_read_only_and_survives_blocked_offers() -> None:
    config = PolicyConfig(allowed_clouds=frozenset({"aws"}))
    mask = policy_allows(CATALOG, config)
    assert mask is policy_allows(CATALOG, config)
    assert not mask.flags.writeable
    needs = TaskNeeds(gpus=1, gpu_type="A10G", est_runtime=timedelta(hours=1))
    first = decide(needs, CATALOG, now=NOW, config=config)
    state = PlacementState()
    state.block(first.offer.key, "InsufficientInstanceCapacity")
    assert decide(needs, CATALOG, now=NOW, config=config, state=state).offer != first.offer
    assert decide(needs, CATALOG, now=NOW, config=config).offer == first.offer
    assert np.array_equal(mask, policy_allows(CATALOG, config))
    assert fitting(needs, CATALOG, config).sum() < (mask & (CATALOG.a_gpus >= 1)).sum()


def test_one_gpu_name_table_serves_gce_and_the_energy_model() -> None:
    on_n1 = {
        o.gpu_type
        for o in CATALOG.offers
        if o.cloud == "gcp" and o.instance_type.startswith("n1-") and o.gpu_count
    }
    assert on_n1 and on_n1 <= set(GCE_ACCELERATOR_TYPES)
    assert set(gpu_names("ccf_gpu_name")) <= set(KNOWN_GPU_TYPES)
    assert set(GCE_ACCELERATOR_TYPES) <= {*KNOWN_GPU_TYPES, "K80"}
    assert GCE_ACCELERATOR_TYPES["T4"] == "nvidia-tesla-t4"


def test_catalog_row_lookups_match_a_scan_of_the_offers() -> None:
    offers = CATALOG.offers
    keys = [offers[5].key, offers[77].key, "aws/nowhere/x/spot", offers[5].key]
    assert CATALOG.rows_of(keys).tolist() == [5, 77]
    capacity = offers[77].capacity_key
    expected = [i for i, o in enumerate(offers) if o.capacity_key == capacity]
    assert len(expected) > 1  # on-demand and spot (and reserved) share a capacity key
    assert CATALOG.rows_of_capacity([capacity, "gcp/nowhere/y"]).tolist() == expected
    for option in PurchaseOption:
        mask = CATALOG.rows_with_option(option)
        assert not mask.flags.writeable
        assert np.flatnonzero(mask).tolist() == [
            i for i, o in enumerate(offers) if o.option is option
        ]


def test_an_interruption_raises_the_risk_of_that_capacity_only() -> None:
    needs = TaskNeeds(gpus=1, gpu_type="A10G", est_runtime=timedelta(hours=2), spot_ok=True)
    first = decide(needs, CATALOG, now=NOW)
    assert first.offer.option is PurchaseOption.SPOT and first.runner_up is not None
    state = PlacementState()
    state.record_interruption(first.offer.capacity_key)
    again = decide(needs, CATALOG, now=NOW, state=state)
    assert again.offer == first.offer  # still cheapest: its hazard is tiny
    # one interruption on record doubles that capacity's hazard, and nobody else's
    assert again.interruption_probability == pytest.approx(
        2 * first.interruption_probability, rel=1e-3
    )
    assert again.expected_cost > first.expected_cost
    assert again.runner_up == first.runner_up and again.runner_up_cost == first.runner_up_cost


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"allowed_clouds": "aws"}, r"allowed_clouds must be a list of names, e.g. \['aws'\]"),
        ({"allowed_clouds": ["azure"]}, "allowed_clouds: unknown 'azure'; valid: aws, gcp"),
        ({"allowed_clouds": []}, "allowed_clouds is empty.*leave it None for no restriction"),
        ({"allowed_regions": ["mars-1"]}, "allowed_regions: unknown 'mars-1'.*us-east-1"),
        ({"allowed_regions": "us-east-1"}, "allowed_regions must be a list"),
        ({"allowed_gpu_types": "L4"}, "allowed_gpu_types must be a list"),
        ({"max_usd_per_hour": -1}, "max_usd_per_hour must be a positive amount.*got -1"),
        ({"max_usd_per_hour": float("nan")}, "max_usd_per_hour must be a positive"),
        ({"max_spot_band": "5-10"}, "max_spot_band must be one of <5%, 5-10%.*got '5-10'"),
        ({"reserved_first": "no"}, "reserved_first must be True or False; got 'no'"),
        ({"change_over": 3}, "change_over must be a timedelta"),
    ],
)
def test_a_bad_policy_is_refused_in_one_line_naming_the_field(kwargs: dict, says: str) -> None:
    with pytest.raises(InputError, match=says) as info:
        PolicyConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_policy_name_lists_become_frozensets() -> None:
    config = PolicyConfig(allowed_clouds=["aws"], allowed_regions=("us-east-1",))
    assert config.allowed_clouds == frozenset({"aws"})
    assert config.allowed_regions == frozenset({"us-east-1"})
    assert hash(config)  # cached masks are keyed by it


def test_a_price_cap_that_excludes_every_fitting_offer_is_named_with_the_cheapest() -> None:
    needs = TaskNeeds(gpus=1, gpu_type="L4", est_runtime=timedelta(hours=1))
    fits = [o for o in CATALOG.offers if o.gpu_type == "L4" and o.gpu_count >= 1]
    cheapest = min(fits, key=lambda o: o.usd_per_hour)
    with pytest.raises(NoFeasibleOffer) as info:
        decide(needs, CATALOG, now=NOW, config=PolicyConfig(max_usd_per_hour=0.01))
    message = str(info.value)
    assert ": max_usd_per_hour $0.01/h excludes every one" in message
    assert f"(the cheapest: {cheapest.describe()})" in message
    assert message.endswith("raise max_usd_per_hour in the policy")


def test_a_price_cap_that_leaves_only_unusable_offers_is_named_among_the_reasons() -> None:
    od = [o for o in CATALOG.offers if o.gpu_type == "L4" and o.option is PurchaseOption.ON_DEMAND]
    cap = min(o.usd_per_hour for o in od) * 0.99  # only spot (or reserved) rows stay under it
    needs = TaskNeeds(gpus=1, gpu_type="L4", est_runtime=timedelta(hours=1), spot_ok=False)
    with pytest.raises(NoFeasibleOffer, match=r"max_usd_per_hour \$[0-9.]+/h excludes \d+"):
        decide(needs, CATALOG, now=NOW, config=PolicyConfig(max_usd_per_hour=cap))
