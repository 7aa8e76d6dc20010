"""Demand forecaster core: metrics, baselines, SARIMAX selection, fallback, backtest.

Series are short and synthetic and the grids small, so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from prefect_cloudsched.core import forecast as fc
from prefect_cloudsched.errors import InputError

DAILY_GRID = (((1, 0, 0), (0, 0, 0, 0)), ((1, 0, 0), (0, 1, 1, 24)))
WALK_GRID = (((1, 0, 0), (0, 0, 0, 0)), ((0, 1, 1), (0, 0, 0, 0)), ((1, 1, 1), (0, 0, 0, 0)))
FAST = {"transform": "none", "daily_fourier": 0, "weekly_fourier": 0}


def daily_series(days: int = 10, peak: int = 15, seed: int = 0) -> pd.Series:
    """Demand around 50 with a daily cycle peaking at hour ``peak`` of each day."""
    hours = np.arange(days * 24)
    rng = np.random.default_rng(seed)
    values = 50 + 20 * np.cos(2 * np.pi * (hours % 24 - peak) / 24) + rng.normal(0, 2, hours.size)
    return pd.Series(values, index=pd.RangeIndex(hours.size, name="hour"))


def random_walk(hours: int = 400, seed: int = 1) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(200 + np.cumsum(rng.normal(0, 3, hours)), index=pd.RangeIndex(hours))


def assert_ordered(frame: pd.DataFrame) -> None:
    cols = frame[["lo95", "lo80", "point", "hi80", "hi95"]].to_numpy()
    assert np.all(np.diff(cols, axis=1) >= -1e-9), frame
    assert (cols >= 0).all()


# --------------------------------------------------------------------------- metrics


def test_seasonal_naive_scale_is_in_sample_mae_of_lag_period() -> None:
    # |3-1|, |4-2|, |10-3| -> (2 + 2 + 7) / 3
    assert fc.seasonal_naive_scale([1, 2, 3, 4, 10], period=2) == pytest.approx(11 / 3)
    assert math.isnan(fc.seasonal_naive_scale([1, 2], period=2))


def test_mase_divides_mae_by_scale_and_skips_missing_actuals() -> None:
    assert fc.mase(np.array([1, 2, 3]), np.array([2, 2, 2]), scale=2) == pytest.approx(1 / 3)
    assert fc.mase(np.array([1, np.nan, 5]), np.array([2, 9, 2]), scale=1) == pytest.approx(2)
    assert math.isnan(fc.mase(np.array([1.0]), np.array([1.0]), scale=0))


def test_smape_in_percent_with_zero_over_zero_as_no_error() -> None:
    # 200*10/210, 0 (both zero), 200*50/50
    got = fc.smape(np.array([100, 0, 50]), np.array([110, 0, 0]))
    assert got == pytest.approx((200 * 10 / 210 + 0 + 200) / 3)


def test_coverage_counts_closed_interval_and_skips_nan() -> None:
    actual = np.array([1, 2, 3, np.nan])
    assert fc.coverage(actual, np.array([0, 2.5, 3, 0]), np.array([1, 3, 3, 9])) == 2 / 3


# --------------------------------------------------------------------------- input


def test_prepare_series_reindexes_gaps_to_nan_and_rejects_negative() -> None:
    s = pd.Series([1.0, 2.0, 4.0], index=[10, 11, 13])
    out = fc.prepare_series(s)
    assert list(out.index) == [10, 11, 12, 13]
    assert np.isnan(out.loc[12])
    with pytest.raises(InputError, match="hour 11 is negative"):
        fc.prepare_series(pd.Series([1.0, -1.0], index=[10, 11]))
    with pytest.raises(InputError, match="empty"):
        fc.prepare_series(pd.Series([], dtype=float))


def test_load_series_csv_reads_column_and_turns_blank_cells_into_gaps(tmp_path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("hour,gpu_hours,jobs\n0,1.5,3\n1,,4\n3,2,5\n")
    series = fc.load_series_csv(path, "gpu_hours")
    assert series.name == "gpu_hours"
    assert series.iloc[0] == 1.5 and np.isnan(series.iloc[1])
    assert list(fc.prepare_series(series).index) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("hour,gpu_hours\n0,1\n1,-2\n", "gpu_hours", r"line 3 \(hour 1\): gpu_hours is negative"),
        ("hour,gpu_hours\n0,1\n1,x\n", "gpu_hours", r"line 3 \(hour 1\).*'x' is not a number"),
        ("hour,gpu_hours\n0,1\n", "cpu", "use --column with one of: gpu_hours"),
        ("hour,gpu_hours\n0,1\n", "hour", "'hour' is the time column, not a value"),
        ("hour,gpu_hours\n0,1,7\n1,2\n", "gpu_hours", "not a valid CSV"),
        ("", "gpu_hours", "is empty"),
        ("hour,gpu_hours\n", "gpu_hours", "no rows"),
        ("hour,gpu_hours\n0,1\n0,2\n", "gpu_hours", "hour 0 appears twice"),
        ("when,gpu_hours\n0,1\n", "gpu_hours", "no 'hour' or 'timestamp' column"),
        ("timestamp,gpu_hours\nnoon,1\n", "gpu_hours", r"line 2: timestamp 'noon' is not an ISO"),
        ("timestamp,gpu_hours\n2026-03-01T00:30:00Z,1\n", "gpu_hours", "not on a whole hour"),
        (
            "timestamp,gpu_hours\n2026-03-01T01:00:00+01:00,1\n2026-03-01T00:00:00Z,2\n",
            "gpu_hours",
            "timestamp 2026-03-01T00:00:00 appears twice",
        ),
        (
            "timestamp,gpu_hours\n2026-03-01T00:00:00Z,x\n",
            "gpu_hours",
            r"line 2 \(2026-03-01T00:00:00\): gpu_hours value 'x' is not a number",
        ),
    ],
)
def test_load_series_csv_rejects_bad_files_naming_the_problem(
    tmp_path, text: str, column: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        fc.load_series_csv(path, column)


def test_load_series_csv_reads_iso_timestamps_as_utc_hours(tmp_path) -> None:
    path = tmp_path / "ts.csv"
    path.write_text(
        "timestamp,gpu_hours\n2026-03-01T00:00:00Z,1\n2026-03-01T02:00:00+01:00,2\n"
        "2026-03-01 03:00,\n"
    )
    series = fc.load_series_csv(path, "gpu_hours")
    assert list(series.index) == list(pd.to_datetime(
        ["2026-03-01T00:00", "2026-03-01T01:00", "2026-03-01T03:00"]
    ))  # fmt: skip
    assert np.isnan(series.iloc[2])
    prepared = fc.prepare_series(series)  # the missing 02:00 becomes a gap
    assert len(prepared) == 4 and prepared.isna().sum() == 2


# --------------------------------------------------------------------------- baselines


def test_lag_forecasts_repeat_last_value_or_last_day_with_empirical_widths() -> None:
    y = pd.Series(np.tile(np.arange(24.0), 3), index=pd.RangeIndex(72))
    seasonal = fc.lag_forecast(y, 30, 24)
    assert seasonal["point"].tolist() == [*range(24), *range(6)]
    assert (seasonal["hi95"] == seasonal["point"]).all()  # a perfect cycle: zero error
    naive = fc.lag_forecast(y, 2, None)
    assert naive["point"].tolist() == [23.0, 23.0]
    # 1-step errors |y[t] - y[t-1]| are 1 (x69) and 23 (x2): the 80% quantile is 1
    assert naive["hi80"].iloc[0] == pytest.approx(24.0)
    assert list(naive.index) == [72, 73]


def test_seasonal_naive_is_a_model_of_its_own_not_a_fallback() -> None:
    y = pd.Series(np.tile(np.arange(24.0), 3), index=pd.RangeIndex(72))
    chosen = fc.fit_forecast(y, 30, model="seasonal-naive")
    assert chosen.model == "seasonal-naive(24)" and chosen.fallback_reason is None
    pd.testing.assert_frame_equal(chosen.frame, fc.lag_forecast(fc.prepare_series(y), 30, 24))
    with pytest.raises(InputError, match="combined or arima or seasonal-naive"):
        fc.fit_forecast(y, 30, model="prophet")


def test_ets_forecast_follows_daily_cycle_with_ordered_intervals() -> None:
    y = daily_series(days=6)
    frame = fc.ets_forecast(y, 24)
    assert_ordered(frame)
    assert abs(int(frame["point"].to_numpy().argmax()) - 15) <= 1


# --------------------------------------------------------------------------- SARIMAX


def test_sarimax_beats_naive_on_daily_cycle_and_gets_the_phase() -> None:
    full = daily_series(days=11)
    history, future = full.iloc[:-24], full.iloc[-24:].to_numpy()
    config = fc.ForecastConfig(orders=DAILY_GRID, **FAST)
    result = fc.fit_forecast(history, 24, config)
    assert result.method == "sarimax" and result.spec is not None
    assert result.spec.seasonal_order == (0, 1, 1, 24)
    point = result.frame["point"].to_numpy()
    naive_mae = np.abs(future - history.iloc[-1]).mean()
    assert np.abs(future - point).mean() < 0.3 * naive_mae
    assert abs(int(point.argmax()) - 15) <= 1  # index 0 is hour 240 = hour 0 of a day
    assert_ordered(result.frame)


def test_daily_fourier_candidate_carries_the_cycle_for_a_non_seasonal_order() -> None:
    history = daily_series(days=8)
    config = fc.ForecastConfig(orders=(((1, 0, 0), (0, 0, 0, 0)),), transform="none",
                               daily_fourier=2, weekly_fourier=0)  # fmt: skip
    result = fc.fit_forecast(history, 24, config)
    assert result.spec is not None and result.spec.daily == 2
    assert abs(int(result.frame["point"].to_numpy().argmax()) - 15) <= 1


def test_aic_picks_differencing_for_a_walk_and_levels_for_a_stationary_ar() -> None:
    rng = np.random.default_rng(3)
    grid = (((1, 0, 0), (0, 0, 0, 0)), ((0, 1, 1), (0, 0, 0, 0)))
    config = fc.ForecastConfig(orders=grid, selection="aic", **FAST)
    walk = fc.select_model(random_walk(300), config)
    ar = np.zeros(300)
    for t in range(1, 300):
        ar[t] = 0.5 * ar[t - 1] + rng.normal()
    stationary = fc.select_model(pd.Series(ar + 100), config)
    assert walk is not None and walk.spec.order == (0, 1, 1)
    assert stationary is not None and stationary.spec.order == (1, 0, 0)


def test_dynamic_points_equal_statsmodels_dynamic_predictions() -> None:
    y = daily_series(days=8)
    y.iloc[60:66] = np.nan
    specs = [fc.ModelSpec((1, 0, 1), (0, 1, 1, 24), log1p=True),
             fc.ModelSpec((1, 1, 1), daily=2), fc.ModelSpec((2, 0, 1))]  # fmt: skip
    starts = [len(y) - 24, len(y) - 48, 100]
    for spec in specs:
        res = fc.fit_sarimax(y, spec)
        got = fc.dynamic_points(res, starts, 24)
        for row, start in zip(got, starts, strict=True):
            pred = res.get_prediction(start=start, end=start + 23, dynamic=True)
            np.testing.assert_allclose(row, np.asarray(pred.predicted_mean), atol=1e-8)


def test_validation_mae_scores_recent_day_boundaries_on_the_original_scale() -> None:
    y = daily_series(days=8)
    spec = fc.ModelSpec((1, 0, 0), (0, 1, 1, 24), log1p=True)
    res = fc.fit_sarimax(y, spec)
    starts = [len(y) - 24, len(y) - 48]
    points = np.expm1(fc.dynamic_points(res, starts, 24))
    manual = np.mean([np.abs(y.to_numpy()[s : s + 24] - p).mean()
                      for s, p in zip(starts, points, strict=True)])  # fmt: skip
    assert fc.validation_mae(res, y, spec, 24, days=2) == pytest.approx(manual)
    assert math.isnan(fc.validation_mae(res, y.iloc[:40], spec, 24, days=2, burn=25))


def test_validation_selection_keeps_aic_within_a_family_and_picks_the_family_by_error() -> None:
    grid = (((1, 0, 0), (0, 0, 0, 0)), ((2, 0, 1), (0, 0, 0, 0)), ((0, 1, 1), (0, 0, 0, 0)),
            ((1, 1, 1), (0, 0, 0, 0)), ((1, 0, 0), (0, 1, 1, 24)))  # fmt: skip
    y = random_walk(400) + daily_series(days=17).to_numpy()[:400] - 50
    config = fc.ForecastConfig(orders=grid, **FAST)
    chosen = fc.select_model(y, config)
    assert chosen is not None and chosen.validation_mae is not None
    burn = 24
    winners: dict[tuple[int, int], tuple[float, fc.ModelSpec, object]] = {}
    for order, seasonal in grid:
        spec = fc.ModelSpec(order, seasonal)
        res = fc.fit_sarimax(y, spec)
        aic = fc.comparable_aic(res, y, spec, burn)
        family = (order[1], seasonal[1])
        if family not in winners or aic < winners[family][0]:
            winners[family] = (aic, spec, res)
    maes = {spec: fc.validation_mae(res, y, spec, 24, 14, burn)
            for _, spec, res in winners.values()}  # fmt: skip
    assert chosen.spec == min(maes, key=maes.__getitem__)
    assert chosen.validation_mae == pytest.approx(maes[chosen.spec])
    by_aic = fc.select_model(y, fc.ForecastConfig(orders=grid, selection="aic", **FAST))
    assert by_aic is not None and by_aic.validation_mae is None
    assert by_aic.aic == min(aic for aic, _, _ in winners.values())


def test_ols_fourier_gives_the_joint_ml_likelihood_faster() -> None:
    y = daily_series(days=10) + random_walk(240).to_numpy() - 200
    for order in ((1, 0, 0), (1, 1, 1)):
        spec = fc.ModelSpec(order, daily=2)
        joint = fc.fit_sarimax(y, spec, ols_fourier=False)
        ols = fc.fit_sarimax(y, spec, ols_fourier=True)
        assert ols.llf == pytest.approx(joint.llf, abs=0.5)
        assert len(ols.params) == len(joint.params)


def test_config_rejects_unknown_selection() -> None:
    with pytest.raises(InputError, match="selection 'bic' is unknown"):
        fc.ForecastConfig(selection="bic")
    with pytest.raises(InputError, match="validation_days"):
        fc.ForecastConfig(validation_days=0)


def test_auto_transform_chooses_log1p_for_multiplicative_spiky_counts() -> None:
    rng = np.random.default_rng(4)
    level = np.zeros(300)
    for t in range(1, 300):
        level[t] = 0.8 * level[t - 1] + rng.normal(0, 0.6)
    counts = pd.Series(np.round(np.exp(2 + level)))
    config = fc.ForecastConfig(orders=WALK_GRID[:1], daily_fourier=0, weekly_fourier=0)
    result = fc.fit_forecast(counts, 12, config)
    assert result.spec is not None and result.spec.log1p
    assert_ordered(result.frame)


def test_weekly_pattern_is_seen_only_when_present() -> None:
    hours = np.arange(4 * 168)
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 1, hours.size)
    weekly = pd.Series(10 * (hours % 168 < 48) + noise)  # two "weekend" days a week
    flat = pd.Series(np.cumsum(noise))
    assert fc.weekly_pattern(weekly) > 0.2
    assert abs(fc.weekly_pattern(flat)) < 0.2
    assert math.isnan(fc.weekly_pattern(flat.iloc[:300]))


def test_short_history_falls_back_to_seasonal_naive_and_says_why() -> None:
    history = daily_series(days=2).iloc[:40]
    result = fc.fit_forecast(history, 24)
    assert result.method == "seasonal_naive"
    assert "40 observed hours" in (result.fallback_reason or "")
    assert result.frame["point"].tolist() == history.iloc[16:40].tolist()
    assert_ordered(result.frame)
    with pytest.raises(InputError, match="at least 24"):
        fc.fit_forecast(history.iloc[:10], 24)


def test_zeros_and_gaps_are_handled_without_inventing_values() -> None:
    history = daily_series(days=8)
    history.iloc[50:70] = 0.0  # an outage
    history.iloc[100:105] = np.nan  # missing values
    history = history.drop(index=range(150, 160))  # missing rows
    config = fc.ForecastConfig(orders=DAILY_GRID, transform="log1p", daily_fourier=0,
                               weekly_fourier=0)  # fmt: skip
    result = fc.fit_forecast(history, 24, config)
    assert result.method == "sarimax"
    assert list(result.frame.index) == list(range(192, 216))
    assert np.isfinite(result.frame.to_numpy()).all()
    assert_ordered(result.frame)


def test_datetime_index_continues_hourly_timestamps_in_json() -> None:
    y = daily_series(days=3)
    y.index = pd.date_range("2025-01-01", periods=len(y), freq="h")
    config = fc.ForecastConfig(orders=DAILY_GRID[:1], **FAST)
    result = fc.fit_forecast(y, 3, config)
    assert result.frame.index[0] == pd.Timestamp("2025-01-04 00:00")
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["rows"][0]["hour"] == "2025-01-04T00:00:00"
    assert payload["method"] == "sarimax" and payload["order"] == [1, 0, 0]
    assert "validation_mae" in payload


def test_horizon_must_be_positive() -> None:
    with pytest.raises(InputError, match="horizon must be at least 1 "):
        fc.fit_forecast(daily_series(days=3), 0)


# --------------------------------------------------------------------------- backtest


def test_backtest_on_persistence_series_keeps_arima_close_to_naive() -> None:
    config = fc.ForecastConfig(orders=WALK_GRID, window=240, **FAST)
    result = fc.backtest(random_walk(), origins=4, models=["arima", "naive"], config=config)
    arima, naive = result.score("arima"), result.score("naive")
    assert arima.forecasts == naive.forecasts == 4 * 24
    assert arima.mase <= 1.15 * naive.mase


def test_backtest_reports_every_model_and_seasonal_models_win_on_a_cycle() -> None:
    config = fc.ForecastConfig(orders=DAILY_GRID, window=192, **FAST)
    result = fc.backtest(daily_series(days=12), origins=3, config=config)
    assert [s.model for s in result.scores] == list(fc.MODELS)
    scores = {s.model: s for s in result.scores}
    assert scores["arima"].mase < 0.5 * scores["naive"].mase
    assert scores["seasonal_naive_24"].mase < scores["naive"].mase
    assert result.origins == [216, 240, 264]
    assert len(result.forecasts["arima"]) == 72
    for score in result.scores:
        assert 0 <= score.coverage80 <= score.coverage95 <= 1
        payload = score.to_dict()
        assert {"model", "mase", "smape", "coverage80", "coverage95", "fit_seconds"} <= set(payload)
    assert_ordered(result.forecasts["arima"])


def test_backtest_rejects_too_many_origins_naming_the_limit() -> None:
    with pytest.raises(InputError, match="use --origins 6 or fewer"):
        fc.backtest(daily_series(days=10), origins=30, models=["naive"])
    with pytest.raises(InputError, match="unknown model 'prophet'"):
        fc.backtest(daily_series(days=10), origins=2, models=["prophet"])
