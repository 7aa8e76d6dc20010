"""The pure ARIMA forecaster: the selected SARIMAX with recalibrated Gaussian intervals."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import norm

from prefect_cloudsched.core.forecast.baselines import lag_forecast
from prefect_cloudsched.core.forecast.sarimax import (
    ForecastConfig,
    _burn,
    _endog,
    _exog,
    _single_threaded,
    select_model,
)
from prefect_cloudsched.core.forecast.series import check_positive as _check_positive
from prefect_cloudsched.core.forecast.series import future_index as _future_index
from prefect_cloudsched.core.forecast.series import prepare_series
from prefect_cloudsched.core.forecast.types import DAY, LEVELS, Forecast, ModelSpec
from prefect_cloudsched.errors import InputError


def interval_scale(
    res, y: pd.Series, spec: ModelSpec, horizon: int, days: int = 7
) -> tuple[float, float]:
    """Widen/narrow the Gaussian intervals to match in-sample multi-step errors.

    From each of the last ``days`` day boundaries inside the window, forecast ``horizon``
    hours dynamically with the fitted parameters and standardise the errors by the model's
    own forecast s.d.; the factors are the 80%/95% quantiles of ``|z|`` divided by the
    Gaussian ones (1.28, 1.96). Recent days only, because demand volatility drifts. Returns
    ``(1, 1)`` when the window has fewer than three such days.
    """
    z_obs = _endog(y, spec)
    n = len(z_obs)
    first = _burn(spec) + DAY
    z_scores: list[np.ndarray] = []
    for start in range(n - horizon, max(first, n - horizon - DAY * (days - 1)) - 1, -DAY):
        pred = res.get_prediction(start=start, end=start + horizon - 1, dynamic=True)
        sd = np.sqrt(np.maximum(np.asarray(pred.var_pred_mean, dtype=float), 0.0))
        err = z_obs[start : start + horizon] - np.asarray(pred.predicted_mean, dtype=float)
        ok = ~np.isnan(err) & (sd > 0)
        z_scores.append(np.abs(err[ok] / sd[ok]))
    pooled = np.concatenate(z_scores) if z_scores else np.empty(0)
    if len(z_scores) < 3 or len(pooled) < 10:
        return (1.0, 1.0)
    q80, q95 = np.quantile(pooled, [0.80, 0.95])
    return (float(q80 / norm.ppf(0.90)), float(q95 / norm.ppf(0.975)))


def sarimax_frame(
    res, y: pd.Series, spec: ModelSpec, horizon: int, scale: tuple[float, float], phase: int = 0
) -> pd.DataFrame:
    """Point forecast and scaled Gaussian intervals, back-transformed and clipped at 0.

    With log1p the back-transformed point is the median, which is what MAE rewards.
    """
    fc = res.get_forecast(horizon, exog=_exog(len(y), spec, horizon, phase))
    mean = np.asarray(fc.predicted_mean, dtype=float)
    sd = np.sqrt(np.maximum(np.asarray(fc.var_pred_mean, dtype=float), 0.0))
    back = np.expm1 if spec.log1p else (lambda v: v)
    cols = {"point": back(mean)}
    for level, factor in zip(LEVELS, scale, strict=True):
        half = factor * norm.ppf(0.5 + level / 200) * sd
        cols[f"lo{level}"] = back(mean - half)
        cols[f"hi{level}"] = back(mean + half)
    frame = pd.DataFrame(cols, index=_future_index(y.index, horizon))
    return frame[["point", "lo80", "hi80", "lo95", "hi95"]].clip(lower=0.0)


FORECASTERS = ("combined", "arima")


@_single_threaded
def fit_forecast(
    series: pd.Series,
    horizon: int = DAY,
    config: ForecastConfig | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    model: str = "arima",
) -> Forecast:
    """Forecast the next ``horizon`` hours of an hourly demand series.

    ``model="arima"`` fits every SARIMAX candidate of the grid on the trailing
    ``config.window`` hours and chooses one (:func:`select_model`: AIC within each
    differencing family, the family by in-window ``horizon``-step error; or plain AIC).
    ``model="combined"`` combines that SARIMAX with ETS, Theta, naive and seasonal-naive
    members and gives conformal intervals (:mod:`.combined`); with under
    ``3 * 24 + min(horizon, 168)`` hours it uses the ARIMA and says so in
    ``fallback_reason``. Either falls back to seasonal-naive(24), with ``fallback_reason``
    set, when the history has fewer than two days of observed hours or SARIMAX cannot fit.

    Args:
        series: hourly demand (integer-hour or hourly DatetimeIndex); gaps may be NaN/missing.
        horizon: hours to forecast (>= 1).
        config: grid, transform, window...; defaults to :class:`ForecastConfig()`.
        progress: called with each candidate's label before it is fitted.
        model: ``combined`` or ``arima`` (kept as the default for library callers).

    Raises:
        InputError: bad series, unknown model, ``horizon < 1`` or under one day of history.
    """
    config = config or ForecastConfig()
    _check_positive(horizon=horizon)
    if model not in FORECASTERS:
        raise InputError(f"model {model!r} is unknown; use {' or '.join(FORECASTERS)}")
    y = prepare_series(series).iloc[-config.window :]
    if model == "combined":
        from prefect_cloudsched.core.forecast.combined import combined_window

        started = time.perf_counter()
        try:
            fit = combined_window(y, horizon, config, progress=progress)
        except InputError as short:
            arima = _forecast_window(y, horizon, config, progress)
            reason = f"{short}; used {arima.model}"
            if arima.fallback_reason:
                reason += f" ({arima.fallback_reason})"
            return dataclasses.replace(arima, fallback_reason=reason)
        return dataclasses.replace(fit.forecast, fit_seconds=time.perf_counter() - started)
    return _forecast_window(y, horizon, config, progress)


def _forecast_window(
    y: pd.Series, horizon: int, config: ForecastConfig, progress: Callable[[str], None] | None
) -> Forecast:
    """:func:`fit_forecast` on an already prepared and windowed series (backtest shares it)."""
    started = time.perf_counter()
    observed = int(y.notna().sum())
    if observed < 2 * DAY:
        reason = f"history has {observed} observed hours; SARIMAX needs at least {2 * DAY}"
        return _fallback(y, horizon, reason, started)
    best = select_model(y, config, progress, horizon)
    if best is None:
        return _fallback(y, horizon, "every SARIMAX candidate failed to fit", started)
    scale = (1.0, 1.0)
    if config.calibrate:
        scale = interval_scale(best.results, y, best.spec, horizon, config.calibration_days)
    frame = sarimax_frame(best.results, y, best.spec, horizon, scale)
    return Forecast(frame, "sarimax", best.spec.label, best.spec, best.aic, None,
                    time.perf_counter() - started, scale, best.validation_mae)  # fmt: skip


def _fallback(y: pd.Series, horizon: int, reason: str, started: float) -> Forecast:
    if len(y) < DAY:
        raise InputError(f"series has {len(y)} hours; give at least {DAY} (one day) to forecast")
    frame = lag_forecast(y, horizon, DAY)
    return Forecast(frame, "seasonal_naive", "seasonal-naive(24)", fallback_reason=reason,
                    fit_seconds=time.perf_counter() - started)  # fmt: skip
