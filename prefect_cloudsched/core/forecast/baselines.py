"""Parameter-light members: naive, seasonal-naive, ETS (Holt-Winters) and Theta."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from prefect_cloudsched.core.forecast.series import future_index as _future_index
from prefect_cloudsched.core.forecast.types import DAY
from prefect_cloudsched.errors import InputError

# --------------------------------------------------------------------------- baselines


def _interpolated(y: pd.Series) -> np.ndarray:
    """Gap-free copy for the baselines and ETS, which cannot skip missing hours."""
    return y.interpolate(limit_direction="both").to_numpy(dtype=float)


def interval_frame(
    index: pd.Index, point: np.ndarray, half80: np.ndarray, half95: np.ndarray
) -> pd.DataFrame:
    """Symmetric intervals around ``point`` clipped at 0 (demand cannot be negative)."""
    frame = pd.DataFrame(
        {
            "point": point,
            "lo80": point - half80,
            "hi80": point + half80,
            "lo95": point - half95,
            "hi95": point + half95,
        },
        index=index,
    )
    return frame.clip(lower=0.0)


def lag_forecast(y: pd.Series, horizon: int, period: int | None) -> pd.DataFrame:
    """Naive (``period=None``) or seasonal-naive forecast with empirical intervals.

    Step ``h`` repeats the value ``lag(h)`` hours back (``h`` for naive, the smallest
    multiple of ``period`` >= ``h`` for seasonal-naive). Its interval half-widths are the
    80%/95% quantiles of ``|y[t] - y[t-lag(h)]|`` over the history, i.e. the same rule's
    in-sample errors at the same lag.
    """
    values = _interpolated(y)
    n = len(values)
    point, half80, half95 = (np.empty(horizon) for _ in range(3))
    for h in range(1, horizon + 1):
        lag = h if period is None else period * math.ceil(h / period)
        if lag > n:
            raise InputError(f"history of {n} hours is shorter than the {lag}-hour lag needed")
        point[h - 1] = values[n - 1 + h - lag]
        errors = np.abs(values[lag:] - values[:-lag]) if lag < n else np.zeros(1)
        half80[h - 1], half95[h - 1] = np.quantile(errors, [0.80, 0.95])
    return interval_frame(_future_index(y.index, horizon), point, half80, half95)


def ets_forecast(y: pd.Series, horizon: int, seed: int = 0) -> pd.DataFrame:
    """Holt-Winters (damped additive trend, additive daily season) with simulated intervals.

    Intervals come from statsmodels' ``simulate`` (1000 paths with Gaussian errors of the
    in-sample residual variance); quantiles of the paths, centred on the point forecast.
    """
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    values = _interpolated(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ExponentialSmoothing(
            values, trend="add", damped_trend=True, seasonal="add", seasonal_periods=DAY,
            initialization_method="estimated",
        ).fit()  # fmt: skip
        paths = res.simulate(horizon, repetitions=1000, error="add", anchor="end",
                             random_state=seed)  # fmt: skip
    point = np.asarray(res.forecast(horizon), dtype=float)
    dev = np.abs(np.asarray(paths).reshape(horizon, -1) - point[:, None])
    half80, half95 = np.quantile(dev, [0.80, 0.95], axis=1)
    return interval_frame(_future_index(y.index, horizon), point, half80, half95)
