"""The members of the combined forecaster, each as in-window paths plus a future forecast.

A member fitted on a window returns a :class:`MemberFit`: its ``horizon``-step point
forecasts from a set of in-window start positions (``paths``, one row per start, original
scale) and from the window's end (``future``). The paths are what the combination weights
and the conformal intervals are computed from. They are vectorised over the starts: the
parameter-free members index the history, ETS and Theta read their fitted states, SARIMAX
iterates its state space (:func:`~prefect_cloudsched.core.forecast.sarimax.dynamic_points`).
Estimated parameters come from the whole window, so the paths are out-of-sample in the data
they see but not in their parameters (see docs/forecast.md, "Calibrated intervals").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from prefect_cloudsched.core.forecast.sarimax import _exog, dynamic_points
from prefect_cloudsched.core.forecast.types import DAY, WEEK


@dataclass(frozen=True)
class MemberFit:
    """One member on one window: in-window paths (starts x horizon) and the future forecast."""

    name: str
    paths: np.ndarray
    future: np.ndarray
    label: str = ""


def lag_paths(values: np.ndarray, starts: Sequence[int], horizon: int, period: int | None):
    """Naive (``period=None``) or seasonal-naive forecasts from each start (and the end).

    Step ``h`` (1-based) from start ``s`` repeats ``values[s - lag(h) + h - 1]`` with
    ``lag(h) = h`` for naive and the smallest multiple of ``period`` >= ``h`` otherwise.
    Returns ``(paths, future)``.
    """
    steps = np.arange(1, horizon + 1)
    lags = steps if period is None else period * np.ceil(steps / period).astype(int)
    origins = np.append(np.asarray(starts, dtype=int), len(values))
    index = origins[:, None] + steps[None, :] - 1 - lags[None, :]
    out = values[np.clip(index, 0, len(values) - 1)]
    return out[:-1], out[-1]


def ets_member(values: np.ndarray, starts: Sequence[int], horizon: int, params=None):
    """Holt-Winters (damped additive trend, additive daily season) paths from its states.

    With ``params`` (the smoothing parameters of an earlier fit) nothing is optimised: the
    states are initialised heuristically and filtered, the warm start of a daily re-run.
    Returns ``(MemberFit, params)``.
    """
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    init = "estimated" if params is None else "heuristic"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExponentialSmoothing(
            values, trend="add", damped_trend=True, seasonal="add", seasonal_periods=DAY,
            initialization_method=init,
        )  # fmt: skip
        res = model.fit() if params is None else model.fit(**params, optimized=False)
    fitted = {
        k: float(res.params[k])
        for k in ("smoothing_level", "smoothing_trend", "smoothing_seasonal", "damping_trend")
    }
    level, trend, season = (np.asarray(a, dtype=float) for a in (res.level, res.trend, res.season))
    phi = fitted["damping_trend"]
    steps = np.arange(1, horizon + 1)
    damp = np.cumsum(phi**steps)
    origins = np.append(np.asarray(starts, dtype=int), len(values)) - 1  # last hour seen
    back = DAY * np.ceil(steps / DAY).astype(int)
    season_at = np.clip(origins[:, None] + steps[None, :] - back[None, :], 0, len(values) - 1)
    out = level[origins, None] + damp[None, :] * trend[origins, None] + season[season_at]
    return MemberFit("ets", out[:-1], out[-1], "Holt-Winters damped, daily season"), fitted


def theta_member(values: np.ndarray, starts: Sequence[int], horizon: int) -> MemberFit:
    """The Theta method as SES with drift (Hyndman & Billah 2003) on deseasonalised hours.

    The daily profile (mean deviation of each hour of day from its day's mean) is removed,
    simple exponential smoothing with the least-squares alpha (grid) tracks the level, the
    drift is half the least-squares slope of the deseasonalised window, and the profile is
    added back.
    """
    from scipy.signal import lfilter

    n = len(values)
    hour_of_day = np.arange(n) % DAY
    days = n // DAY
    whole = values[n - days * DAY :].reshape(days, DAY)
    profile_by_phase = (whole - whole.mean(axis=1, keepdims=True)).mean(axis=0)
    profile = np.roll(profile_by_phase, (n - days * DAY) % DAY)  # index by hour_of_day
    x = values - profile[hour_of_day]
    slope = float(np.polyfit(np.arange(n), x, 1)[0])
    best: tuple[float, np.ndarray] | None = None
    for alpha in np.linspace(0.05, 1.0, 20):
        # level[t] = alpha * x[t] + (1 - alpha) * level[t-1], started at x[0]
        level = lfilter([alpha], [1.0, alpha - 1.0], x, zi=[(1 - alpha) * x[0]])[0]
        sse = float(np.sum((x[1:] - level[:-1]) ** 2))
        if best is None or sse < best[0]:
            best, chosen = (sse, level), alpha
    level = best[1]
    steps = np.arange(1, horizon + 1)
    drift = 0.5 * slope * (steps - 1 + 1 / chosen)
    origins = np.append(np.asarray(starts, dtype=int), n) - 1
    hours = (origins[:, None] + steps[None, :]) % DAY
    out = level[origins, None] + drift[None, :] + profile[hours]
    return MemberFit("theta", out[:-1], out[-1], f"Theta (SES alpha={chosen:.2f} + drift)")


def sarimax_member(res, spec, y: pd.Series, starts: Sequence[int], horizon: int, phase=0):
    """The selected SARIMAX: dynamic in-window paths and the future mean, original scale."""
    paths = dynamic_points(res, starts, horizon) if len(starts) else np.empty((0, horizon))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = res.get_forecast(horizon, exog=_exog(len(y), spec, horizon, phase))
    future = np.asarray(fc.predicted_mean, dtype=float)
    if spec.log1p:
        paths, future = np.expm1(paths), np.expm1(future)
    return MemberFit("arima", paths, future, spec.label)


def baseline_members(values: np.ndarray, starts: Sequence[int], horizon: int) -> list[MemberFit]:
    """naive, seasonal-naive 24 and (see :func:`_weekly_member_fits`) seasonal-naive 168."""
    fits = []
    for name, period in (("seasonal_naive_24", DAY), ("seasonal_naive_168", WEEK), ("naive", None)):
        if period == WEEK and not _weekly_member_fits(len(values), starts):
            continue
        paths, future = lag_paths(values, starts, horizon, period)
        fits.append(MemberFit(name, paths, future, name))
    return fits


def validation_starts(n: int, horizon: int, days: int, first: int) -> list[int]:
    """The last ``days`` day boundaries whose ``horizon`` hours lie inside the window."""
    starts = [n - horizon - DAY * k for k in range(days)]
    return sorted(s for s in starts if s >= first)


def _weekly_member_fits(n: int, starts: Sequence[int]) -> bool:
    """Seasonal-naive 168 joins when every start has a week of history before it and the
    window holds more than a week after the earliest start (so its paths are not mostly
    the window's first week repeated)."""
    earliest = min(starts) if len(starts) else 0
    return earliest >= WEEK and n > WEEK + earliest
