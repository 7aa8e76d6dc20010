"""Rolling-origin backtest of every member, pure ARIMA and the combined forecaster."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from prefect_cloudsched.core.forecast.baselines import lag_forecast
from prefect_cloudsched.core.forecast.combined import combined_window
from prefect_cloudsched.core.forecast.metrics import coverage, mase, seasonal_naive_scale, smape
from prefect_cloudsched.core.forecast.sarimax import ForecastConfig, _single_threaded
from prefect_cloudsched.core.forecast.series import check_mostly_observed, prepare_series
from prefect_cloudsched.core.forecast.series import check_positive as _check_positive
from prefect_cloudsched.core.forecast.series import json_label as _json_label
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
    model sees only the trailing ``config.window`` hours before its origin. At each origin the
    combined forecaster fits all its members once (:func:`.combined.combined_window`) and every
    member is scored from that same fit, so ``arima`` is the SARIMAX member with its own
    recalibrated Gaussian intervals and the other members carry conformal intervals. Origins
    follow each other like a daily production run: SARIMAX and ETS are re-estimated every
    ``config.reselect_days`` origins and only re-filtered in between. An origin where SARIMAX
    fails scores seasonal-naive(24) for ``arima`` and counts in its ``fallbacks`` (likewise for
    seasonal_naive_168 before a week of history). MASE at an origin is scaled by the
    seasonal-naive(24) in-sample MAE of that origin's window and averaged over origins; sMAPE
    and coverage are averaged over all scored hours.

    Raises:
        InputError: unknown model, non-positive sizes, or too few hours for ``origins``.
    """
    config = config or ForecastConfig()
    _check_positive(horizon=horizon, origins=origins)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise InputError(f"unknown model {unknown[0]!r}; use some of: {', '.join(MODELS)}")
    y = prepare_series(series)
    check_mostly_observed(y)
    positions = _positions(len(y), horizon, origins)
    actuals = [y.iloc[p : p + horizon].to_numpy() for p in positions]
    histories = [y.iloc[max(0, p - config.window) : p] for p in positions]
    scales = [seasonal_naive_scale(h.to_numpy()) for h in histories]
    frames: dict[str, list[pd.DataFrame]] = {m: [] for m in models}
    fallbacks: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    chosen, weights = [], []
    warm = None
    started, cpu = time.perf_counter(), time.process_time()
    for i, history in enumerate(histories):
        if progress:
            progress(f"origin {i + 1}/{len(histories)}")
        step = _numbered(progress, i, len(histories))
        fit = combined_window(history, horizon, config, warm, step, "arima" in models)
        warm = fit.warm.moved(DAY)
        seconds.update(fit.seconds)
        weights.append(fit.weights)
        chosen.append(fit.forecast.spec.label if fit.forecast.spec else "seasonal-naive(24)")
        fallbacks["arima"] += fit.arima_fallback
        for name in models:
            frame = fit.forecast.frame if name == "combined" else fit.member_frames.get(name)
            if frame is None:
                fallbacks[name] += 1
                frame = lag_forecast(history, horizon, DAY)
            frames[name].append(frame)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    spent = {"combined": total, "arima": seconds["sarimax"]}
    scores = [
        _score(
            name,
            frames[name],
            actuals,
            scales,
            spent.get(name, seconds["baselines"]),
            fallbacks[name],
            _tally(chosen) if name == "arima" else "",
        )
        for name in models
    ]
    labels = [_json_label(y.index[p]) for p in positions]
    stacked = {name: pd.concat(f) for name, f in frames.items()}
    return BacktestResult(
        scores, labels, horizon, config.window, chosen, stacked, weights, total, cpu
    )


def _positions(hours: int, horizon: int, origins: int) -> list[int]:
    """Origins 24 h apart, the last leaving ``horizon`` hours; each with enough history."""
    need = 3 * DAY + min(horizon, WEEK)
    positions = [hours - horizon - DAY * k for k in range(origins - 1, -1, -1)]
    if positions[0] < need:
        most = max(0, (hours - horizon - need) // DAY + 1)
        wanted = need + horizon + DAY * (origins - 1)
        if most == 0:
            more = f", {origins} origins need {wanted}" if origins > 1 else ""
            raise InputError(
                f"series has {hours} hours: too short for a backtest {horizon} h ahead; one "
                f"origin needs {need + horizon} hours ({need} of history plus the {horizon} "
                f"scored){more}; give a longer series"
            )
        raise InputError(
            f"series has {hours} hours: too short for {origins} origins with {need} hours of"
            f" history each ({wanted} hours); use --origins {most} or fewer"
        )
    return positions


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


def _score(
    name: str,
    frames: list[pd.DataFrame],
    actuals: list[np.ndarray],
    scales: list[float],
    seconds: float,
    fallbacks: int,
    detail: str,
) -> ModelScore:
    mases = [
        mase(a, f["point"].to_numpy(), s) for a, f, s in zip(actuals, frames, scales, strict=True)
    ]
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
