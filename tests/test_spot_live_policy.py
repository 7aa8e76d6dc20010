"""The live spot controller keeps the policy's limits (max_spot_band)."""

from __future__ import annotations

from datetime import timedelta

from prefect_cloudsched.core.catalog import BAND_ORDER, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.testing.executor import InstanceStandInExecutor
from prefect_cloudsched.testing.session import runtime_session

NEEDS = TaskNeeds(
    gpus=1,
    gpu_type="A10G",
    spot_ok=True,
    checkpointable=True,
    est_runtime=timedelta(hours=4),
    deadline=timedelta(hours=8),
)


def _market_bands(tmp_path, policy: PolicyConfig) -> set[str | None]:
    session = runtime_session(tmp_path, policy=policy, executor=InstanceStandInExecutor())
    spec = session.submit("train", NEEDS, flow_run_id="r", flow_name="f", announce=False)
    job = session.spot_live.job(spec, "tr-1")
    session.close()
    assert all(o.option is PurchaseOption.SPOT for o in job.offers.values())
    return {o.interruption_band for o in job.offers.values()}


def test_controlled_tasks_never_use_spot_beyond_the_policys_band(tmp_path) -> None:
    aws = frozenset({"aws"})
    anywhere = _market_bands(tmp_path / "any", PolicyConfig(allowed_clouds=aws))
    strict = BAND_ORDER[1]  # "5-10%": A10G spot exists in and beyond it
    accepted = set(BAND_ORDER[:2])
    assert anywhere - accepted, "the catalog should offer A10G spot in riskier bands too"
    kept = _market_bands(
        tmp_path / "strict", PolicyConfig(allowed_clouds=aws, max_spot_band=strict)
    )
    assert kept and kept <= accepted


def test_the_controller_never_picks_a_dearer_spot_offer_than_the_policy(tmp_path) -> None:
    """A short job with room to spare: the controller may change the zone, not pay more
    (it used to rank zones by saving against each region's own on-demand, and chose a
    $0.2052/h zone over the policy's $0.1894/h one)."""
    short = TaskNeeds(
        gpus=1,
        spot_ok=True,
        checkpointable=True,
        est_runtime=timedelta(minutes=30),
        deadline=timedelta(hours=3),
    )
    session = runtime_session(tmp_path, executor=InstanceStandInExecutor())
    spec = session.submit("train", short, flow_run_id="r", flow_name="f", announce=False)
    base = spec.decision
    chosen = session.spot_live.choose(spec, "tr-1", base)
    session.close()
    assert chosen.offer.option is PurchaseOption.SPOT
    assert chosen.offer.usd_per_hour <= base.offer.usd_per_hour + 1e-9
    assert chosen.marginal_cost is None  # what it adds to the bill is what it costs
    if chosen.offer.key != base.offer.key:  # the report explains the change by the policy's pick
        assert chosen.runner_up == base.offer and chosen.runner_up_cost == base.expected_cost
    assert chosen.reasons[-1].startswith("spot control: ")
