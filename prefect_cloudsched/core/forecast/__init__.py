"""Hourly demand forecasting: a combined forecaster (SARIMAX backbone plus ETS, Theta, naive
and seasonal-naive members) with conformal intervals, the pure ARIMA, and their backtest.

Pure core: no Prefect and no CLI imports, so the ledger (GPU-hours per accelerator type) and
the ``forecast``/``plan`` commands share it. Demand is a non-negative hourly series; every
forecast and interval is clipped at 0. See ``docs/forecast.md`` for the models in plain words.

Modules: ``series`` (CSV loader, validation), ``metrics``, ``baselines`` (naive, seasonal-naive,
ETS, Theta), ``sarimax`` (grid, estimation, selection), ``arima`` (the pure ARIMA forecast),
``combined`` (weights and conformal intervals), ``backtest``.
"""

from prefect_cloudsched.core.forecast.arima import fit_forecast, interval_scale, sarimax_frame
from prefect_cloudsched.core.forecast.backtest import backtest
from prefect_cloudsched.core.forecast.baselines import ets_forecast, lag_forecast
from prefect_cloudsched.core.forecast.metrics import coverage, mase, seasonal_naive_scale, smape
from prefect_cloudsched.core.forecast.sarimax import (
    ForecastConfig,
    Selection,
    candidate_specs,
    comparable_aic,
    dynamic_points,
    fit_sarimax,
    select_model,
    validation_mae,
    weekly_pattern,
)
from prefect_cloudsched.core.forecast.series import load_series_csv, prepare_series
from prefect_cloudsched.core.forecast.types import (
    DAY,
    DEFAULT_ORDERS,
    LEVELS,
    MODELS,
    WEEK,
    BacktestResult,
    Forecast,
    ModelScore,
    ModelSpec,
)

__all__ = [
    "DAY",
    "DEFAULT_ORDERS",
    "LEVELS",
    "MODELS",
    "WEEK",
    "BacktestResult",
    "Forecast",
    "ForecastConfig",
    "ModelScore",
    "ModelSpec",
    "Selection",
    "backtest",
    "candidate_specs",
    "comparable_aic",
    "coverage",
    "dynamic_points",
    "ets_forecast",
    "fit_forecast",
    "fit_sarimax",
    "interval_scale",
    "lag_forecast",
    "load_series_csv",
    "mase",
    "prepare_series",
    "sarimax_frame",
    "seasonal_naive_scale",
    "select_model",
    "smape",
    "validation_mae",
    "weekly_pattern",
]
