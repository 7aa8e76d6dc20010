"""Rolling-origin backtest of every member, pure ARIMA and the combined forecaster."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from prefect_cloudsched.core.forecast.arima import _forecast_window
from prefect_cloudsched.core.forecast.baselines import ets_forecast, lag_forecast
from prefect_cloudsched.core.forecast.metrics import coverage, mase, seasonal_naive_scale, smape
from prefect_cloudsched.core.forecast.sarimax import ForecastConfig, _single_threaded
from prefect_cloudsched.core.forecast.series import check_positive as _check_positive
from prefect_cloudsched.core.forecast.series import json_label as _json_label
from prefect_cloudsched.core.forecast.series import prepare_series
from prefect_cloudsched.core.forecast.types import (
    DAY,
    MODELS,
    WEEK,
    BacktestResult,
    ModelScore,
)
from prefect_cloudsched.errors import InputError

# --------------------------------------------------------------------------- backtest


@_single_threaded
def backtest(
    series: pd.Series,
    *,
    horizon: int = DAY,
    origins: int = 14,
    models: Sequence[str] = MODELS,
    config: ForecastConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> BacktestResult:
    """Rolling-origin evaluation: forecast ``horizon`` hours from each of the last origins.

    Origins are 24 h apart and the last one leaves exactly ``horizon`` hours to score. Every
    model sees only the trailing ``config.window`` hours before its origin. ARIMA is exactly
    :func:`fit_forecast` at every origin: the model choice and the estimation are redone
    daily; its seasonal-naive fallbacks count in ``fallbacks`` (as do seasonal_naive_168's
    origins with a window under 169 h, which use seasonal-naive(24)). MASE at an origin is
    scaled by the seasonal-naive(24) in-sample MAE of that origin's window and averaged over
    origins; sMAPE and coverage are averaged over all scored hours.

    Raises:
        InputError: unknown model, non-positive sizes, or too few hours for ``origins``.
    """
    config = config or ForecastConfig()
    _check_positive(horizon=horizon, origins=origins)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise InputError(f"unknown model {unknown[0]!r}; use some of: {', '.join(MODELS)}")
    y = prepare_series(series)
    positions = [len(y) - horizon - DAY * k for k in range(origins - 1, -1, -1)]
    if positions[0] < 2 * DAY:
        most = max(0, (len(y) - horizon - 2 * DAY) // DAY + 1)
        raise InputError(
            f"series has {len(y)} hours: too short for {origins} origins with {2 * DAY} hours of"
            f" history each; use --origins {most} or fewer"
        )
    actuals = [y.iloc[p : p + horizon].to_numpy() for p in positions]
    histories = [y.iloc[max(0, p - config.window) : p] for p in positions]
    scales = [seasonal_naive_scale(h.to_numpy()) for h in histories]
    scores = []
    chosen: list[str] = []
    stacked: dict[str, pd.DataFrame] = {}
    for name in models:
        if progress:
            progress(name)
        started = time.perf_counter()
        if name == "arima":
            fits = [
                _forecast_window(h, horizon, config, _numbered(progress, i, len(histories)))
                for i, h in enumerate(histories)
            ]
            frames, chosen = [f.frame for f in fits], [f.model for f in fits]
            fallbacks = sum(f.method != "sarimax" for f in fits)
        else:
            pairs = [_baseline(name, h, horizon) for h in histories]
            frames, fallbacks = [f for f, _ in pairs], sum(fell for _, fell in pairs)
        seconds = time.perf_counter() - started
        detail = _tally(chosen) if name == "arima" else ""
        scores.append(_score(name, frames, actuals, scales, seconds, fallbacks, detail))
        stacked[name] = pd.concat(frames)
    labels = [_json_label(y.index[p]) for p in positions]
    return BacktestResult(scores, labels, horizon, config.window, chosen, stacked)


def _numbered(
    progress: Callable[[str], None] | None, i: int, total: int
) -> Callable[[str], None] | None:
    """Prefix progress messages with the origin number."""
    if progress is None:
        return None
    return lambda label: progress(f"arima origin {i + 1}/{total}: {label}")


def _tally(labels: list[str]) -> str:
    """``"9x A, 5x B"``: which SARIMAX specs were chosen, most frequent first."""
    return ", ".join(f"{n}x {label}" for label, n in Counter(labels).most_common())


def _baseline(name: str, history: pd.Series, horizon: int) -> tuple[pd.DataFrame, bool]:
    """One baseline forecast; ``True`` when it had to fall back to seasonal-naive(24)."""
    if name == "ets":
        try:
            return ets_forecast(history, horizon), False
        except (ValueError, np.linalg.LinAlgError):
            return lag_forecast(history, horizon, DAY), True
    period = {"naive": None, "seasonal_naive_24": DAY, "seasonal_naive_168": WEEK}[name]
    if period == WEEK and len(history) <= WEEK:
        return lag_forecast(history, horizon, DAY), True
    return lag_forecast(history, horizon, period), False


def _score(
    name: str,
    frames: list[pd.DataFrame],
    actuals: list[np.ndarray],
    scales: list[float],
    seconds: float,
    fallbacks: int,
    detail: str,
) -> ModelScore:
    mases = [mase(a, f["point"].to_numpy(), s) for a, f, s in zip(actuals, frames, scales,
                                                                  strict=True)]  # fmt: skip
    actual = np.concatenate(actuals)
    stacked = pd.concat(frames)
    return ModelScore(
        model=name,
        mase=float(np.nanmean(mases)) if not np.isnan(mases).all() else math.nan,
        smape=smape(actual, stacked["point"].to_numpy()),
        coverage80=coverage(actual, stacked["lo80"].to_numpy(), stacked["hi80"].to_numpy()),
        coverage95=coverage(actual, stacked["lo95"].to_numpy(), stacked["hi95"].to_numpy()),
        fit_seconds=seconds,
        forecasts=int((~np.isnan(actual)).sum()),
        fallbacks=fallbacks,
        detail=detail,
    )
