"""The pure ARIMA forecaster: the selected SARIMAX with recalibrated Gaussian intervals."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pandas as pd

from prefect_cloudsched.core.forecast.baselines import lag_forecast
from prefect_cloudsched.core.forecast.sarimax import (  # noqa: F401  (re-exported)
    ForecastConfig,
    _burn,
    _endog,
    _exog,
    _single_threaded,
    interval_scale,
    sarimax_frame,
    select_model,
)
from prefect_cloudsched.core.forecast.series import check_mostly_observed, prepare_series
from prefect_cloudsched.core.forecast.series import check_positive as _check_positive
from prefect_cloudsched.core.forecast.types import DAY, Forecast
from prefect_cloudsched.errors import InputError

FORECASTERS = ("combined", "arima", "seasonal-naive")


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
        model: ``combined``, ``arima`` (kept as the default for library callers) or
            ``seasonal-naive`` (yesterday repeated: the fast baseline, chosen on purpose).

    Raises:
        InputError: bad series, unknown model, ``horizon < 1`` or under one day of history.
    """
    config = config or ForecastConfig()
    _check_positive(horizon=horizon)
    if model not in FORECASTERS:
        raise InputError(f"model {model!r} is unknown; use {' or '.join(FORECASTERS)}")
    y = prepare_series(series).iloc[-config.window :]
    check_mostly_observed(y)
    if model == "seasonal-naive":
        return _fallback(y, horizon, None, time.perf_counter())
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


def _fallback(y: pd.Series, horizon: int, reason: str | None, started: float) -> Forecast:
    if len(y) < DAY:
        raise InputError(f"series has {len(y)} hours; give at least {DAY} (one day) to forecast")
    frame = lag_forecast(y, horizon, DAY)
    return Forecast(frame, "seasonal_naive", "seasonal-naive(24)", fallback_reason=reason,
                    fit_seconds=time.perf_counter() - started)  # fmt: skip
