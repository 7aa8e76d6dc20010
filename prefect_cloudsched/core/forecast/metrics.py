"""Forecast accuracy metrics: MASE, sMAPE and interval coverage."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from prefect_cloudsched.core.forecast.types import DAY

# --------------------------------------------------------------------------- metrics


def seasonal_naive_scale(history: Sequence[float] | np.ndarray, period: int = DAY) -> float:
    """MASE denominator: in-sample MAE of the seasonal-naive forecast ``y[t-period]``."""
    y = np.asarray(history, dtype=float)
    if len(y) <= period:
        return math.nan
    return float(np.nanmean(np.abs(y[period:] - y[:-period])))


def mase(actual: np.ndarray, predicted: np.ndarray, scale: float) -> float:
    """Mean absolute error divided by ``scale`` (NaN actuals are skipped)."""
    err = np.abs(np.asarray(actual, dtype=float) - np.asarray(predicted, dtype=float))
    if not scale or math.isnan(scale) or np.isnan(err).all():
        return math.nan
    return float(np.nanmean(err) / scale)


def smape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Symmetric MAPE in percent (0..200); a point where both are 0 counts as 0 error."""
    a = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    denom = np.abs(a) + np.abs(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(denom == 0, 0.0, 200.0 * np.abs(a - p) / denom)
    terms = terms[~np.isnan(a)]
    return float(terms.mean()) if len(terms) else math.nan


def coverage(actual: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of (non-NaN) actuals inside the closed interval ``[lo, hi]``."""
    a = np.asarray(actual, dtype=float)
    ok = ~np.isnan(a)
    inside = (a >= np.asarray(lo, dtype=float)) & (a <= np.asarray(hi, dtype=float))
    return float(inside[ok].mean()) if ok.any() else math.nan
