"""The pure spot controller, the single-job trace replay, its baselines and the ILP bound."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from prefect_cloudsched.core.policy import spot_control
from prefect_cloudsched.core.policy.spot_control import (
    AvailabilityModel,
    JobStatus,
    Kind,
    Market,
    Placement,
    SpotController,
)
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.simulate.spot_bound import omniscient_cost
from prefect_cloudsched.simulate.spot_replay import (
    Controlled,
    Greedy,
    SpotJob,
    SpotMarket,
    UniformProgress,
    load_market,
    replay,
)

H = 3600.0


def test_controller_module_is_pure() -> None:
    tree = ast.parse(Path(spot_control.__file__).read_text())
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    banned = (
        "prefect_cloudsched.simulate",
        "prefect_cloudsched.runtime",
        "prefect_cloudsched.adapters",
        "prefect",
    )
    assert not [
        m for m in imported if m.startswith(banned) and not m.startswith("prefect_cloudsched.core")
    ]


def test_model_learns_runs_and_predicts_residual_life() -> None:
    model = AvailabilityModel(prior_up_s=H, prior_weight=1)
    t = 0.0
    for up, length in [(True, 4 * H), (False, H), (True, 4 * H), (False, H), (True, 0)]:
        model.observe("z", t, up)
        t += length
    assert model.is_up("z") and model.up_age_s("z", t + H) == H
    # two 4 h runs + the 1 h prior: at age 0 the mean residual is (4 + 4 + 1) / 3 h
    assert model.residual_up_s("z", t) == pytest.approx(3 * H)
    # at age 1 h only the 4 h runs (3 h left each) and the prior count
    assert model.residual_up_s("z", t + H) == pytest.approx((3 + 3 + 1) / 3 * H)
    assert model.availability("z") == pytest.approx(8 / 10)
    assert model.mean_up_s("z") == pytest.approx(3 * H)


def test_short_runs_bill_without_progress() -> None:
    model = AvailabilityModel(prior_up_s=H, prior_weight=0.001)
    t = 0.0
    for _ in range(20):  # runs of 6 min: shorter than a 12 min change-over
        model.observe("z", t, True)
        model.observe("z", t + 360, False)
        t += 3600
    model.observe("z", t, True)
    billed, useful = model.residual_stats("z", t, cap_s=10 * H, lost_s=720)
    assert billed == pytest.approx(360, rel=0.01) and useful < 1.0


def _controller(markets: list[Market] | None = None, **kwargs) -> SpotController:
    markets = markets or [Market("us-east-1a", "us-east-1", 1.0, 3.0)]
    return SpotController(markets, change_over_s=0.2 * H, horizon_s=300, **kwargs)


def _status(now: float, done: float, **kwargs) -> JobStatus:
    base = dict(now_s=now, work_s=10 * H, done_s=done, deadline_s=15 * H, start_s=0.0)
    return JobStatus(**(base | kwargs))


def test_safety_net_forces_on_demand_and_keeps_it() -> None:
    controller = _controller()
    controller.observe("us-east-1a", 0, True)
    # 5 h of work left, 5.25 h to go: slack 0.25 h < d + horizon
    decision = controller.decide(_status(9.75 * H, 5 * H))
    assert decision.kind is Kind.ON_DEMAND and decision.region == "us-east-1"
    on_demand = Placement(Kind.ON_DEMAND, None, "us-east-1")
    assert controller.decide(_status(9.75 * H, 5 * H, placement=on_demand)).kind is Kind.STAY


def test_stays_on_spot_while_up_and_waits_when_ahead() -> None:
    controller = _controller()
    controller.observe("us-east-1a", 0, True)
    spot = Placement(Kind.SPOT, "us-east-1a", "us-east-1")
    assert controller.decide(_status(H, 0.9 * H, placement=spot)).kind is Kind.STAY
    controller.observe("us-east-1a", H, False)
    ahead = controller.decide(_status(H, 0.9 * H))  # the line still owes nothing at 1 h
    assert ahead.kind is Kind.WAIT and ahead.recheck_at_s == H + 300


def test_behind_without_spot_goes_on_demand() -> None:
    controller = _controller()
    controller.observe("us-east-1a", 0, False)
    # slack 5 h of a 15 h window: the line owes nothing for 1.5 × 5/15 = half the slack,
    # then rises to 10 h of work by 15 h: 2.8 h at 6 h, 2.96 h at 6.2 h
    assert controller.decide(_status(6 * H, 3 * H)).kind is Kind.WAIT
    assert controller.decide(_status(6 * H, 2.5 * H)).kind is Kind.ON_DEMAND
    # ahead of the line now but behind it d = 0.2 h later, when on-demand would start
    # making progress: it starts its change-over now
    assert controller.decide(_status(6 * H, 2.9 * H)).kind is Kind.ON_DEMAND


def test_prefers_the_zone_that_lasts_and_the_cheaper_one() -> None:
    markets = [
        Market("us-east-1a", "us-east-1", 1.0, 3.0),
        Market("us-east-1b", "us-east-1", 1.0, 3.0),
    ]
    controller = _controller(markets, model=AvailabilityModel(prior_weight=0.01))
    for k in range(10):  # a: 10 min runs; b: 5 h runs
        controller.observe("us-east-1a", k * H, True)
        controller.observe("us-east-1a", k * H + 600, False)
    controller.observe("us-east-1b", 0, True)
    controller.observe("us-east-1b", 5 * H, False)
    controller.observe("us-east-1b", 6 * H, True)
    controller.observe("us-east-1a", 10 * H, True)
    decision = controller.decide(_status(10 * H, 10 * H, work_s=20 * H, deadline_s=40 * H))
    assert decision.kind is Kind.SPOT and decision.zone == "us-east-1b"


def test_saving_is_counted_against_the_jobs_own_on_demand() -> None:
    # the runner's markets mix instance types: an A100 spot zone looks like a large saving
    # against its own $5/h on-demand, but the job would otherwise pay $0.12/h (a T4)
    markets = [
        Market("us-east5-a", "us-east5", 1.6565, 5.07),
        Market("us-central1-a", "us-central1", 0.0292, 0.1183),
    ]
    controller = _controller(markets)
    for zone in ("us-east5-a", "us-central1-a"):
        controller.observe(zone, 0, True)
    job = dict(work_s=0.5 * H, deadline_s=3 * H)
    decision = controller.decide(_status(0, 0, **job))
    assert decision.kind is Kind.SPOT and decision.zone == "us-central1-a"
    # alone, the dear zone is not worth leaving the cheap on-demand for
    alone = _controller([markets[0], Market("x", "us-central1", 9.0, 0.1183)])
    alone.observe("us-east5-a", 0, True)
    assert alone.decide(_status(0, 0, **job)).kind is not Kind.SPOT


def test_a_move_pays_egress_and_is_flagged() -> None:
    markets = [
        Market("us-east-1a", "us-east-1", 1.0, 3.0),
        Market("us-west-2a", "us-west-2", 1.0, 3.0),
    ]
    controller = _controller(markets, egress_usd=0.5)
    controller.observe("us-east-1a", 0, False)
    controller.observe("us-west-2a", 0, True)
    decision = controller.decide(_status(0, 0, checkpoint_region="us-east-1"))
    assert decision.kind is Kind.SPOT and decision.region == "us-west-2" and decision.moves
    dear = _controller(markets, egress_usd=1000.0)
    dear.observe("us-east-1a", 0, False)
    dear.observe("us-west-2a", 0, True)
    assert dear.decide(_status(0, 0, checkpoint_region="us-east-1")).kind is Kind.WAIT


def test_controller_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="markets"):
        SpotController([], change_over_s=1, horizon_s=1)
    with pytest.raises(ValueError, match="horizon_s"):
        SpotController([Market("a", "r", 1, 2)], change_over_s=1, horizon_s=0)


def _market(
    up: np.ndarray, gap: float = 0.1 * H, prices: tuple[float, ...] | None = None
) -> SpotMarket:
    up = np.atleast_2d(up).astype(bool)
    zones = tuple(f"us-east-1{c}" for c in "abcdef"[: up.shape[0]])
    return SpotMarket(zones, gap, up, prices or (1.0,) * len(zones), 3.0)


def test_replay_accounting_by_hand() -> None:
    market = _market(np.ones(100))
    job = SpotJob(0, 1 * H, 2 * H, 0.2 * H)
    result = replay(Greedy(), market, job)
    # 0.2 h change-over then 1 h of work: 12 ticks of 0.1 h at $1/h
    assert not result.missed and result.finish_s == pytest.approx(1.2 * H)
    assert result.cost_usd == pytest.approx(1.2) and result.spot_starts == 1
    bound = omniscient_cost(market, job)
    assert bound.optimal and bound.cost_usd == pytest.approx(1.2)


def test_the_finishing_tick_bills_only_until_the_work_is_done() -> None:
    """Clouds bill per second and the instance is released when the job is done: the tick
    in which the work completes pays only until then (the live runner bills so; a whole
    tick overbilled the replay by half a tick on average, bench/bench_live_spot.py)."""
    market = _market(np.ones(100))
    job = SpotJob(0, 1.15 * H, 2 * H, 0.2 * H)
    result = replay(Greedy(), market, job)
    assert result.finish_s == pytest.approx(1.35 * H)
    assert result.cost_usd == pytest.approx(1.35) and result.spot_hours == pytest.approx(1.35)
    bound = omniscient_cost(market, job)
    assert bound.optimal and bound.cost_usd == pytest.approx(1.35)


def test_up_runs_on_demand_when_spot_never_comes() -> None:
    market = _market(np.zeros(100))
    job = SpotJob(0, 1 * H, 2 * H, 0.2 * H)
    up = replay(UniformProgress(), market, job)
    assert not up.missed and up.spot_starts == 0 and up.on_demand_hours > 0
    assert omniscient_cost(market, job).cost_usd == pytest.approx(1.2 * 3.0)


def test_trace_too_short_is_an_input_error() -> None:
    with pytest.raises(InputError, match="start_tick"):
        replay(Greedy(), _market(np.ones(10)), SpotJob(5, H, 2 * H, 0.2 * H))


@pytest.mark.parametrize("seed", range(12))
def test_controller_never_misses_and_bound_is_below_every_policy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ticks = 400
    # bursty zones: up/down runs of 1-30 ticks
    rows = []
    for _ in range(2):
        row, up = [], bool(rng.integers(2))
        while len(row) < ticks:
            row += [up] * int(rng.integers(1, 30))
            up = not up
        rows.append(row[:ticks])
    market = _market(np.array(rows), gap=0.05 * H, prices=(1.0, 1.3))
    slack = [1.1, 1.25, 1.5, 2.0][seed % 4]
    job = SpotJob(int(rng.integers(0, 100)), 4 * H, slack * 4 * H, 0.2 * H)
    results = {p.name: replay(p(), market, job) for p in (Greedy, UniformProgress, Controlled)}
    assert not results["controller"].missed
    bound = omniscient_cost(market, job)
    for result in results.values():
        if not result.missed:
            assert bound.cost_usd <= result.cost_usd + 1e-6


@pytest.mark.parametrize("late_s", [0.0, None])
def test_adversarial_spot_cannot_make_the_controller_miss(late_s: float | None) -> None:
    # spot up every other tick: each start is preempted before its change-over ends
    market = _market(np.tile([True, False], 300), gap=0.05 * H)
    job = SpotJob(0, 4 * H, 4.6 * H, 0.2 * H)
    result = replay(Controlled(history_s=0, late_s=late_s), market, job)
    assert not result.missed


def test_load_market_reads_suffixed_columns(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(
        "timestamp_utc,us-west-2a_k80_1,us-west-2a_v100_1\n"
        "2022-10-26T22:05:04Z,1,0\n2022-10-26T22:15:04Z,0,1\n2022-10-26T22:25:04Z,1,1\n"
    )
    market = load_market(
        path, on_demand_usd_per_hour=0.9, spot_usd_per_hour=0.27, column_suffix="_k80_1"
    )
    assert market.zones == ("us-west-2a",) and market.gap_s == 600
    assert market.up.tolist() == [[True, False, True]]
    with pytest.raises(InputError, match="no column"):
        load_market(path, on_demand_usd_per_hour=1, spot_usd_per_hour=1, column_suffix="_h100")
    with pytest.raises(InputError, match="no price"):
        load_market(path, on_demand_usd_per_hour=1, spot_usd_per_hour={}, column_suffix="_k80_1")


def test_a_zone_up_for_long_is_expected_to_stay_up_longer() -> None:
    # no run history: only the prior speaks, and it grows with the run's age (decreasing
    # hazard, as on the p3 trace) instead of forgetting that the zone has lasted 20 h
    model = AvailabilityModel(prior_up_s=2 * H, prior_weight=1)
    model.observe("old", -20 * H, True)
    model.observe("new", 0, True)
    old = model.residual_stats("old", 0, cap_s=10 * H, lost_s=0.2 * H)
    new = model.residual_stats("new", 0, cap_s=10 * H, lost_s=0.2 * H)
    assert old[1] > 2 * new[1] / 1.5
    assert model.residual_up_s("old", 0) == pytest.approx(20 * H)
    markets = [
        Market("us-east-1a", "us-east-1", 1.0, 3.0),
        Market("us-east-1b", "us-east-1", 1.0, 3.0),
    ]
    controller = _controller(markets, model=AvailabilityModel(prior_weight=1))
    controller.observe("us-east-1a", 9 * H, True)  # a came up 1 h ago, b 9 h ago
    controller.observe("us-east-1b", 1 * H, True)
    decision = controller.decide(_status(10 * H, 10 * H, work_s=20 * H, deadline_s=40 * H))
    assert decision.kind is Kind.SPOT and decision.zone == "us-east-1b"


def test_without_slack_for_a_spot_start_it_commits_to_on_demand() -> None:
    controller = _controller()
    controller.observe("us-east-1a", 0, False)
    # 4.05 h of 5 h left, 4.5 h to go: slack 0.45 h is above the safety net (d + h = 0.28 h)
    # but below a spot start's 2d + h (0.48 h), and the job is ahead of its line; waiting
    # could only end on on-demand again, one more change-over later
    late = _status(10.5 * H, 0.95 * H, work_s=5 * H)
    assert controller.decide(late).kind is Kind.ON_DEMAND
    on_demand = Placement(Kind.ON_DEMAND, None, "us-east-1")
    late_on_demand = _status(10.5 * H, 0.95 * H, work_s=5 * H, placement=on_demand)
    assert controller.decide(late_on_demand).kind is Kind.STAY


def test_on_demand_is_left_for_spot_only() -> None:
    controller = _controller()
    controller.observe("us-east-1a", 0, False)
    on_demand = Placement(Kind.ON_DEMAND, None, "us-east-1")
    # far ahead of the line (it owes nothing at 1 h), but idling would pay d to come back
    assert controller.decide(_status(H, 0.8 * H, placement=on_demand)).kind is Kind.STAY
    controller.observe("us-east-1a", H, True)
    decision = controller.decide(_status(H, 0.8 * H, placement=on_demand))
    assert decision.kind is Kind.SPOT and decision.zone == "us-east-1a"


def test_on_demand_is_left_for_spot_once_on_the_line() -> None:
    # line as in test_behind_without_spot_goes_on_demand: 2.8 h at 6 h, 3.12 h at 6.4 h;
    # 3 h done is on the line but not two change-overs ahead: no extra hysteresis, since
    # the spot score already counts leaving on-demand's second change-over
    controller = _controller()
    controller.observe("us-east-1a", 6 * H, True)
    on_demand = Placement(Kind.ON_DEMAND, None, "us-east-1")
    assert controller.decide(_status(6 * H, 3 * H, placement=on_demand)).kind is Kind.SPOT
    assert controller.decide(_status(6 * H, 2.7 * H, placement=on_demand)).kind is Kind.STAY


def test_a_spot_start_keeps_one_more_interval_for_a_late_decision() -> None:
    controller = _controller()
    controller.observe("us-east-1a", 0, True)
    # slack 0.5 h: a start would spend d = 0.2 h and leave 0.3 h, above the safety net's
    # d + h (0.28 h) by less than one more interval (300 s), so it is not started
    edge = _status(10.5 * H, 1 * H, work_s=5 * H)
    assert controller.decide(edge).kind is Kind.ON_DEMAND
    roomy = _status(10.5 * H, 1.1 * H, work_s=5 * H)  # slack 0.6 h >= 2 (d + h) = 0.57 h
    assert controller.decide(roomy).kind is Kind.SPOT


def test_a_controller_that_decides_on_time_starts_and_keeps_spot_with_less_slack() -> None:
    on_time = _controller(late_s=0)
    for controller in (on_time, _controller()):
        controller.observe("us-east-1a", 0, True)
    # the edge above: slack 0.5 h >= 2d (0.4 h) and d + h (0.28 h) with no late margin
    edge = _status(10.5 * H, 1 * H, work_s=5 * H)
    assert on_time.decide(edge).kind is Kind.SPOT
    # on spot with 0.21 h of slack: an interruption is seen at once and d = 0.2 h is left
    spot = Placement(Kind.SPOT, "us-east-1a", "us-east-1")
    thin = _status(10.79 * H, 1 * H, work_s=5 * H, placement=spot)
    assert on_time.decide(thin).kind is Kind.STAY
    assert _controller().decide(thin).kind is Kind.ON_DEMAND  # keeps d + h for a late one
    on_time.observe("us-east-1a", 10.79 * H, False)
    assert on_time.decide(thin).kind is Kind.ON_DEMAND  # interrupted: on-demand to the end


def test_late_margin_defaults_to_the_horizon_and_rejects_negatives() -> None:
    assert _controller().late_s == 300
    with pytest.raises(ValueError, match="late_s"):
        _controller(late_s=-1)
