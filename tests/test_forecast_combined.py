"""The combined forecaster: member paths, weights, conformal intervals, warm starts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from prefect_cloudsched.core import forecast as fc
from prefect_cloudsched.core.forecast import combined, members
from prefect_cloudsched.errors import InputError

FAST = {"transform": "none", "daily_fourier": 0, "weekly_fourier": 0}
SMALL_GRID = (((1, 0, 0), (0, 0, 0, 0)), ((1, 0, 0), (0, 1, 1, 24)))


def cyclic_ar_series(days: int, seed: int = 0, noise: float = 3.0) -> pd.Series:
    """A daily cycle plus AR(1) noise around 100: every member has something to offer."""
    rng = np.random.default_rng(seed)
    hours = np.arange(days * 24)
    ar = np.zeros(hours.size)
    for t in range(1, hours.size):
        ar[t] = 0.8 * ar[t - 1] + rng.normal(0, noise)
    values = 100 + 15 * np.sin(2 * np.pi * hours / 24) + ar
    return pd.Series(values, index=pd.RangeIndex(hours.size, name="hour"))


# --------------------------------------------------------------------------- member paths


def test_lag_paths_repeat_the_right_past_hours() -> None:
    values = np.arange(100.0)
    paths, future = members.lag_paths(values, [50, 74], 30, 24)
    assert paths[0].tolist() == [*range(26, 50), *range(26, 32)]
    assert future.tolist() == [*range(76, 100), *range(76, 82)]
    naive, _ = members.lag_paths(values, [50], 3, None)
    assert naive[0].tolist() == [49.0, 49.0, 49.0]


def test_ets_paths_from_the_window_end_equal_statsmodels_forecast() -> None:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    values = cyclic_ar_series(days=14).to_numpy()
    fit, params = members.ets_member(values, [200, 224], 30)
    res = ExponentialSmoothing(
        values, trend="add", damped_trend=True, seasonal="add", seasonal_periods=24,
        initialization_method="estimated",
    ).fit()  # fmt: skip
    np.testing.assert_allclose(fit.future, res.forecast(30), rtol=1e-6)
    assert set(params) == {"smoothing_level", "smoothing_trend", "smoothing_seasonal",
                           "damping_trend"}  # fmt: skip


def test_theta_member_follows_the_daily_profile() -> None:
    y = cyclic_ar_series(days=10, noise=0.5)
    fit = members.theta_member(y.to_numpy(), [120], 24)
    truth = 100 + 15 * np.sin(2 * np.pi * np.arange(240, 264) / 24)
    assert np.abs(fit.future - truth).mean() < 5


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("shrink", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_weights_are_on_the_simplex_and_never_worse_than_the_best_member(
    shrink: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    actual = rng.normal(100, 10, (6, 24))
    paths = np.stack([actual + rng.normal(bias, sd, actual.shape)
                      for bias, sd in ((0, 5), (3, 2), (-4, 8), (10, 1))])  # fmt: skip
    weights = combined.stack_weights(paths, actual, shrink)
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0)
    combined_mae = np.abs(np.tensordot(weights, paths, axes=1) - actual).mean()
    best_member = min(np.abs(p - actual).mean() for p in paths)
    assert combined_mae <= best_member + 1e-9
    if shrink == 0.0:  # opposite biases cancel: stacking beats every member
        assert combined_mae < 0.9 * best_member


def test_a_member_without_paths_gets_no_weight() -> None:
    actual = np.ones((3, 4))
    paths = np.stack([actual + 1, np.full_like(actual, np.nan), actual - 0.5])
    weights = combined.stack_weights(paths, actual)
    assert weights[1] == 0 and weights.sum() == pytest.approx(1.0)


def test_combined_fit_is_no_worse_than_each_member_on_its_validation_days() -> None:
    y = cyclic_ar_series(days=21)
    config = fc.ForecastConfig(orders=SMALL_GRID, **FAST)
    fit = combined.combined_window(y, 24, config)
    maes = dict(fit.validation_mae)
    best = min(v for k, v in maes.items() if k != "combined")
    assert maes["combined"] <= best + 1e-9
    assert set(fit.weights) == set(config.members)
    assert fit.forecast.method == "combined" and fit.forecast.weights == fit.weights


# --------------------------------------------------------------------------- conformal


def test_conformal_intervals_cover_what_they_claim_on_exchangeable_errors() -> None:
    rng = np.random.default_rng(7)
    residuals = rng.standard_t(df=5, size=(60, 24))  # heavy-tailed, scale 1 at every start
    frame = combined.conformal_frame(pd.RangeIndex(24), np.full(24, 100.0), residuals,
                                     [1.0] * 60, scale_now=1.0)  # fmt: skip
    fresh = 100 + rng.standard_t(df=5, size=(4000, 24))
    for level, lo, hi in ((80, "lo80", "hi80"), (95, "lo95", "hi95")):
        inside = (fresh >= frame[lo].to_numpy()) & (fresh <= frame[hi].to_numpy())
        assert abs(inside.mean() - level / 100) < 0.03


def test_conformal_intervals_widen_with_the_volatility_now() -> None:
    residuals = np.random.default_rng(1).normal(0, 1, (30, 6))
    calm = combined.conformal_frame(pd.RangeIndex(10), np.full(10, 50.0), residuals,
                                    [1.0] * 30, scale_now=1.0)  # fmt: skip
    stormy = combined.conformal_frame(pd.RangeIndex(10), np.full(10, 50.0), residuals,
                                      [1.0] * 30, scale_now=2.0)  # fmt: skip
    np.testing.assert_allclose(stormy["hi80"] - 50, 2 * (calm["hi80"] - 50))
    # steps past the validated six reuse the last validated step's width
    assert calm["hi95"].iloc[9] == calm["hi95"].iloc[5]


def test_combined_backtest_intervals_are_calibrated_on_a_synthetic_series() -> None:
    config = fc.ForecastConfig(orders=SMALL_GRID, window=336, **FAST)
    result = fc.backtest(cyclic_ar_series(days=36, seed=3), origins=14, config=config,
                         models=["combined", "naive"])  # fmt: skip
    score = result.score("combined")
    assert 0.72 <= score.coverage80 <= 0.88, score
    assert 0.89 <= score.coverage95 <= 0.99, score
    assert score.mase < result.score("naive").mase
    assert len(result.weights) == 14


# --------------------------------------------------------------------------- warm starts


def test_backtest_searches_the_grid_once_and_re_estimates_weekly(monkeypatch) -> None:
    calls = {"grid": 0, "refit": 0}
    real_select, real_fit = combined.select_model, combined.fit_sarimax

    def counting_select(*args, **kwargs):
        calls["grid"] += 1
        return real_select(*args, **kwargs)

    def counting_fit(*args, **kwargs):
        calls["refit"] += 1
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(combined, "select_model", counting_select)
    monkeypatch.setattr(combined, "fit_sarimax", counting_fit)
    config = fc.ForecastConfig(orders=SMALL_GRID, window=240, **FAST)
    fc.backtest(cyclic_ar_series(days=26), origins=15, config=config, models=["combined"])
    assert calls == {"grid": 1, "refit": 2}  # origins 1 (grid), 8 and 15 (warm re-estimates)


def test_fit_forecast_model_choice() -> None:
    y = cyclic_ar_series(days=12)
    config = fc.ForecastConfig(orders=SMALL_GRID, **FAST)
    assert fc.fit_forecast(y, 6, config, model="combined").method == "combined"
    assert fc.fit_forecast(y, 6, config).method == "sarimax"  # the library default is ARIMA
    with pytest.raises(InputError, match="model 'prophet' is unknown; use combined or arima"):
        fc.fit_forecast(y, 6, config, model="prophet")
    with pytest.raises(InputError, match="members"):
        fc.ForecastConfig(members=("arima", "prophet"))


def test_refilter_keeps_the_weekly_fourier_phase_when_the_window_moves() -> None:
    hours = np.arange(5 * 168)
    rng = np.random.default_rng(2)
    weekly = 100 + 30 * np.sin(2 * np.pi * hours / 168) + rng.normal(0, 1, hours.size)
    y = pd.Series(weekly, index=pd.RangeIndex(hours.size))
    spec = fc.ModelSpec((1, 0, 0), weekly=1)
    first = fc.fit_sarimax(y.iloc[:672], spec)
    moved = y.iloc[24:696]
    from prefect_cloudsched.core.forecast.sarimax import refilter

    right = refilter(moved, spec, first.params, phase=24)
    wrong = refilter(moved, spec, first.params, phase=0)
    # the moved window's one-step predictions match the original fit's on the shared hours
    shared = np.asarray(first.fittedvalues)[200:672]
    np.testing.assert_allclose(np.asarray(right.fittedvalues)[176:648], shared, atol=1e-6)
    assert np.abs(np.asarray(wrong.fittedvalues)[176:648] - shared).mean() > 1.0


def test_weighted_conformal_quantile_without_decay_is_the_split_conformal_rank() -> None:
    scores = np.arange(1.0, 20.0)  # 19 scores: ceil(20 * 0.8) = 16th, ceil(20 * 0.95) = 19th
    ones = np.ones_like(scores)
    assert combined.weighted_conformal_quantile(scores, ones, 80) == 16.0
    assert combined.weighted_conformal_quantile(scores, ones, 95) == 19.0
    # too few scores for the level: the largest one, not an extrapolation
    assert combined.weighted_conformal_quantile(scores[:5], ones[:5], 95) == 5.0
    assert np.isnan(combined.weighted_conformal_quantile(np.array([np.nan]), ones[:1], 80))


def test_recency_weighted_intervals_follow_errors_that_grew_lately() -> None:
    rng = np.random.default_rng(5)
    residuals = rng.normal(0, 1, (14, 24))
    residuals[-3:] *= 4  # the last three days were four times as wrong
    args = (pd.RangeIndex(24), np.full(24, 100.0), residuals, [1.0] * 14, 1.0)
    plain = combined.conformal_frame(*args, decay=1.0)
    recent = combined.conformal_frame(*args, decay=0.6)
    assert (recent["hi80"] - plain["hi80"]).mean() > 1.0
    fresh = 100 + rng.normal(0, 4, (2000, 24))  # the errors stay large
    inside = (fresh >= recent["lo80"].to_numpy()) & (fresh <= recent["hi80"].to_numpy())
    assert inside.mean() > 0.7


def test_crossfit_residuals_are_out_of_sample_in_the_weights() -> None:
    # member 0 is right on the first week, member 1 on the second: weights fitted on all days
    # look good everywhere, weights fitted without a day cannot know that day's good member
    rng = np.random.default_rng(2)
    actual = 100 + rng.normal(0, 1, (14, 24))
    paths = np.stack([actual + 5.0, actual - 5.0])
    paths[0, :7] = actual[:7]
    paths[1, 7:] = actual[7:]
    weights = combined.stack_weights(paths, actual)
    in_sample = np.abs(actual - np.tensordot(weights, paths, axes=1)).mean()
    honest = combined.crossfit_residuals(paths, actual, shrink=1.0, folds=7)
    assert honest.shape == actual.shape
    assert np.abs(honest).mean() > in_sample + 0.5
    # with identical members there is nothing to overfit: cross-fitted errors are the errors
    same = np.stack([actual + 1.0, actual + 1.0])
    np.testing.assert_allclose(combined.crossfit_residuals(same, actual, 1.0, 7), -1.0)


def _warm_with_last_frame(lo: float, hi: float) -> combined.WarmStart:
    index = pd.RangeIndex(100, 124)
    frame = pd.DataFrame(
        {"point": 50.0, "lo80": lo, "hi80": hi, "lo95": lo - 5, "hi95": hi + 5}, index=index
    )
    return combined.WarmStart(None, None, last_frame=frame)


def test_adaptive_conformal_raises_the_level_after_misses_and_lowers_it_after_hits() -> None:
    y = pd.Series(50.0, index=pd.RangeIndex(0, 124))  # the forecast hours 100..123 are now seen
    missed = combined.adapted_miss_rates(_warm_with_last_frame(60, 70), y, gamma=0.1)
    covered = combined.adapted_miss_rates(_warm_with_last_frame(40, 60), y, gamma=0.1)
    assert missed[0] == pytest.approx(0.2 + 0.1 * (0.2 - 1.0))  # every hour outside
    assert missed[1] == pytest.approx(0.0)  # 0.05 - 0.095, kept at 0
    assert covered == pytest.approx((0.2 + 0.1 * 0.2, 0.05 + 0.1 * 0.05))
    # nothing to check yet (hours not in the window, or no warm start): targets unchanged
    early = combined.adapted_miss_rates(_warm_with_last_frame(60, 70), y.iloc[:100], gamma=0.1)
    assert early == pytest.approx((0.2, 0.05))
    assert combined.adapted_miss_rates(None, y, gamma=0.1) == pytest.approx((0.2, 0.05))


def test_lower_miss_rate_targets_widen_the_intervals() -> None:
    residuals = np.random.default_rng(3).normal(0, 1, (14, 24))
    args = (pd.RangeIndex(24), np.full(24, 100.0), residuals, [1.0] * 14, 1.0)
    nominal = combined.conformal_frame(*args)
    stricter = combined.conformal_frame(*args, miss_rates=(0.1, 0.02))
    assert (stricter["hi80"] > nominal["hi80"]).mean() > 0.8
    assert (stricter["hi95"] >= stricter["hi80"]).all()


@pytest.mark.parametrize(
    ("field", "value"), [("conformal_decay", 0.0), ("conformal_decay", 1.5),
                         ("aci_gamma", -0.1), ("crossfit_folds", 1)],
)  # fmt: skip
def test_interval_settings_out_of_range_name_the_field(field: str, value: float) -> None:
    with pytest.raises(InputError, match=field):
        fc.ForecastConfig(**{field: value})


def test_inverse_weights_that_pass_the_guard_skip_the_stacking_programme(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    actual = rng.normal(100, 10, (6, 24))
    # opposite biases: the inverse-squared-MAE blend beats both members on validation
    paths = np.stack([actual + 2, actual - 2.5])
    expected = combined.stack_weights(paths, actual, 1.0)
    solved = []
    real = combined._lad_weights
    monkeypatch.setattr(combined, "_lad_weights", lambda *a: solved.append(1) or real(*a))
    weights = combined.stack_weights(paths, actual, 1.0)
    inverse = np.array([1 / 2**2, 1 / 2.5**2])
    np.testing.assert_allclose(weights, inverse / inverse.sum())
    np.testing.assert_array_equal(weights, expected)
    assert not solved
    # the same paths with stacking asked for (shrink < 1) do solve it
    combined.stack_weights(paths, actual, 0.5)
    assert solved


def test_quantiles_at_several_levels_are_each_levels_own_quantile() -> None:
    rng = np.random.default_rng(3)
    scores = rng.exponential(1.0, 70)
    scores[[4, 9]] = np.nan
    weights = np.repeat(0.85 ** np.arange(13, -1, -1), 5)
    levels = [80.0, 95.0, 99.9]
    together = combined.weighted_conformal_quantiles(scores, weights, levels)
    assert together == [combined.weighted_conformal_quantile(scores, weights, q) for q in levels]
    assert together[0] < together[1] <= together[2] == np.nanmax(scores)
    no_scores = combined.weighted_conformal_quantiles(np.full(3, np.nan), np.ones(3), levels)
    assert np.isnan(no_scores).all()


def test_width_tracking_widens_after_misses_and_narrows_after_hits() -> None:
    y = pd.Series(50.0, index=pd.RangeIndex(0, 124))  # the forecast hours 100..123 are now seen
    missed = combined.tracked_width_factors(_warm_with_last_frame(60, 70), y, eta=0.1)
    covered = combined.tracked_width_factors(_warm_with_last_frame(40, 60), y, eta=0.1)
    # every hour outside: log f80 += 0.1 * (1 - 0.2) / 0.2; the 95 % step (1.9) hits the bound
    assert missed == pytest.approx((np.exp(0.4), combined.WIDTH_FACTOR_BOUND))
    assert covered == pytest.approx((np.exp(-0.1), np.exp(-0.1)))  # no hour outside
    # the factors carry over: a second covered day narrows again from where the first left
    # it, and no run of misses widens past the bound
    again = combined.tracked_width_factors(
        dataclasses.replace(_warm_with_last_frame(40, 60), width_factors=covered), y, eta=0.1
    )
    assert again == pytest.approx((np.exp(-0.2), np.exp(-0.2)))
    worse = combined.tracked_width_factors(
        dataclasses.replace(_warm_with_last_frame(60, 70), width_factors=missed), y, eta=0.1
    )
    assert worse == pytest.approx((combined.WIDTH_FACTOR_BOUND,) * 2)  # exp(0.8) > 2
    # nothing to check, no warm start, or tracking off: factors unchanged
    early = combined.tracked_width_factors(_warm_with_last_frame(60, 70), y.iloc[:100], eta=0.1)
    assert early == (1.0, 1.0)
    assert combined.tracked_width_factors(None, y, eta=0.1) == (1.0, 1.0)
    assert combined.tracked_width_factors(_warm_with_last_frame(60, 70), y, eta=0.0) == (1.0, 1.0)


def test_a_missed_day_widens_the_next_combined_intervals_by_the_tracked_factor() -> None:
    y = cyclic_ar_series(days=12)
    config = fc.ForecastConfig(orders=SMALL_GRID, aci_gamma=0.0, **FAST)  # tracking alone
    first = combined.combined_window(y.iloc[:-24], 24, config)
    warm = first.warm.moved(24)
    seen = y.iloc[-24:].to_numpy()
    outside = first.forecast.frame.assign(lo80=seen + 1, hi80=seen + 2, lo95=seen + 1,
                                          hi95=seen + 2)  # fmt: skip
    inside = first.forecast.frame.assign(lo80=seen - 1, hi80=seen + 1, lo95=seen - 1,
                                         hi95=seen + 1)  # fmt: skip
    wide = combined.combined_window(y, 24, config, dataclasses.replace(warm, last_frame=outside))
    narrow = combined.combined_window(y, 24, config, dataclasses.replace(warm, last_frame=inside))
    half = {
        name: (fit.forecast.frame["hi80"] - fit.forecast.frame["point"]).to_numpy()
        for name, fit in (("wide", wide), ("narrow", narrow))
    }
    np.testing.assert_allclose(half["wide"] / half["narrow"], np.exp(0.4 + 0.1))
    assert wide.warm.width_factors == pytest.approx((np.exp(0.4), 2.0))
    np.testing.assert_allclose(wide.forecast.frame["point"], narrow.forecast.frame["point"])


def test_width_eta_out_of_range_names_the_field() -> None:
    with pytest.raises(InputError, match="width_eta"):
        fc.ForecastConfig(width_eta=1.5)


# --------------------------------------------------------------------------- short windows


def test_pool_for_starts_widens_the_pool_only_until_the_95_level_is_resolvable() -> None:
    assert combined.pool_for_starts(14, 2, 0.85) == 2  # a full window: 5 x 5.6 = 28 >= 19
    assert combined.pool_for_starts(4, 2, 0.85) == 3  # 5 x 3.19 = 16 < 19 <= 7 x 3.19
    assert combined.pool_for_starts(4, 2, 1.0) == 2  # 20 equal weights resolve 95 %
    scores = np.arange(1.0, 5 * 4 + 1)  # four days, five steps: too little weight at 0.85
    weights = np.repeat(0.85 ** np.arange(3, -1, -1), 5)
    assert combined.weighted_conformal_quantile(scores, weights, 95) == scores.max()


def test_a_short_window_pools_more_steps_for_its_conformal_quantiles(monkeypatch) -> None:
    pools: list[int] = []
    original = combined.conformal_frame

    def spy(*args, **kwargs):
        pools.append(args[5])
        return original(*args, **kwargs)

    monkeypatch.setattr(combined, "conformal_frame", spy)
    config = fc.ForecastConfig(orders=SMALL_GRID, **FAST)
    combined.combined_window(cyclic_ar_series(days=6), 24, config)  # 4 in-window starts
    assert set(pools) == {3}
    pools.clear()
    combined.combined_window(cyclic_ar_series(days=28), 24, config)  # 14 starts
    assert set(pools) == {config.conformal_pool}


def test_steps_past_the_validated_week_do_not_freeze_on_the_last_steps_extreme() -> None:
    """A level shift in the newest start's last hours must not set the width of weeks 2-4
    (the audit's Helios plan reserved 1,380 GPUs at 720 h against 472 at 168 h)."""
    rng = np.random.default_rng(3)
    residuals = rng.normal(0, 10, (14, 168))
    residuals[-1, -24:] += 600  # the newest start's last day: the drop that ends the series
    args = ([1.0] * 14, 1.0, 2, 0.85)
    week = combined.conformal_frame(pd.RangeIndex(168), np.full(168, 500.0), residuals, *args)
    month = combined.conformal_frame(pd.RangeIndex(720), np.full(720, 500.0), residuals, *args)
    pd.testing.assert_frame_equal(month.iloc[:168], week)  # validated steps are unchanged
    later = month.iloc[168:]
    half80, half95 = later["hi80"] - later["point"], later["hi95"] - later["point"]
    assert half80.nunique() == 1 and half95.nunique() == 1  # flat past the week
    typical = (week["hi80"] - week["point"]).iloc[84:].median()
    assert half80.iloc[0] == pytest.approx(typical)
    assert half80.iloc[0] < 0.2 * (week["hi80"] - week["point"]).iloc[-1]
    assert half95.iloc[0] > half80.iloc[0]  # the 95 % stays wider than the 80 %
