"""Shared constants and result types of the demand forecaster."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import pandas as pd

from prefect_cloudsched.core.forecast.series import json_label as _json_label

#: Members of the combination, in report order. ``arima`` is the SARIMAX selection.
MEMBERS = ("arima", "ets", "theta", "seasonal_naive_24", "seasonal_naive_168", "naive")

DAY = 24
WEEK = 168
LEVELS = (80, 95)
#: Models a backtest scores: the combination, then its members (``arima`` is the SARIMAX).
MODELS = (
    "combined", "arima", "ets", "theta", "naive", "seasonal_naive_24", "seasonal_naive_168",
)  # fmt: skip

Order = tuple[int, int, int]
SeasonalOrder = tuple[int, int, int, int]

#: The candidate grid. Non-seasonal ARIMA with d in {0, 1} catches persistence-dominated series
#: (the forecast relaxes from the last level towards the window mean or stays at it); the
#: (0,1,Q,24) variants catch daily cycles (seasonal differencing with a seasonal MA is a
#: smoothed seasonal-naive, and the short AR/MA part corrects it with the latest hours).
#: Seasonal AR terms (P=1) are left out: with period 24 they cost 5-15x more to fit and were
#: never the better forecaster in development.
DEFAULT_ORDERS: tuple[tuple[Order, SeasonalOrder], ...] = (
    ((1, 0, 0), (0, 0, 0, 0)),
    ((2, 0, 1), (0, 0, 0, 0)),
    ((0, 1, 1), (0, 0, 0, 0)),
    ((1, 1, 1), (0, 0, 0, 0)),
    ((2, 1, 1), (0, 0, 0, 0)),
    ((1, 0, 0), (0, 1, 0, DAY)),
    ((1, 0, 0), (0, 1, 1, DAY)),
    ((1, 0, 1), (0, 1, 1, DAY)),
    ((1, 1, 1), (0, 1, 1, DAY)),
)


@dataclass(frozen=True)
class ModelSpec:
    """One SARIMAX candidate: orders, log1p scale, daily/weekly Fourier pairs as regressors."""

    order: Order
    seasonal_order: SeasonalOrder = (0, 0, 0, 0)
    log1p: bool = False
    daily: int = 0
    weekly: int = 0

    @property
    def trend(self) -> str:
        """A constant only for undifferenced models; with differencing it would be a drift."""
        return "n" if self.order[1] or self.seasonal_order[1] else "c"

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``SARIMAX(1,0,1)(0,1,1,24) log1p +weekly Fourier K=2``."""
        text = "SARIMAX({},{},{})".format(*self.order)
        if any(self.seasonal_order[:3]):
            text += "({},{},{},{})".format(*self.seasonal_order)
        if self.log1p:
            text += " log1p"
        if self.daily:
            text += f" +daily Fourier K={self.daily}"
        if self.weekly:
            text += f" +weekly Fourier K={self.weekly}"
        return text


@dataclass(frozen=True)
class Forecast:
    """A point forecast with 80% and 95% intervals, and how it was made.

    ``frame`` is indexed by the future hours (same index type as the input) with columns
    ``point, lo80, hi80, lo95, hi95``. ``method`` is ``combined``, ``sarimax`` or
    ``seasonal_naive``; ``fallback_reason`` says why the seasonal-naive fallback was used.
    A combined forecast names its members' ``weights`` and ``members`` (name -> model).
    """

    frame: pd.DataFrame
    method: str
    model: str
    spec: ModelSpec | None = None
    aic: float | None = None
    fallback_reason: str | None = None
    fit_seconds: float = 0.0
    interval_scale: tuple[float, float] | None = None
    validation_mae: float | None = None
    weights: dict[str, float] | None = None
    members: dict[str, str] | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: model info plus one row per forecast hour."""
        rows = [
            {"hour": _json_label(hour), **{k: round(float(v), 6) for k, v in row.items()}}
            for hour, row in self.frame.iterrows()
        ]
        return {
            "method": self.method,
            "model": self.model,
            "order": list(self.spec.order) if self.spec else None,
            "seasonal_order": list(self.spec.seasonal_order) if self.spec else None,
            "transform": ("log1p" if self.spec.log1p else "none") if self.spec else None,
            "daily_fourier": self.spec.daily if self.spec else None,
            "weekly_fourier": self.spec.weekly if self.spec else None,
            "aic": None if self.aic is None else round(self.aic, 3),
            "validation_mae": None if self.validation_mae is None
            else round(self.validation_mae, 6),
            "fallback_reason": self.fallback_reason,
            "fit_seconds": round(self.fit_seconds, 3),
            "interval_scale": None if self.interval_scale is None
            else dict(zip(("80", "95"), (round(c, 3) for c in self.interval_scale), strict=True)),
            "weights": None if self.weights is None
            else {k: round(v, 4) for k, v in self.weights.items()},
            "members": self.members,
            "rows": rows,
        }  # fmt: skip


@dataclass(frozen=True)
class ModelScore:
    """Backtest metrics of one model over all rolling origins."""

    model: str
    mase: float
    smape: float
    coverage80: float
    coverage95: float
    fit_seconds: float
    forecasts: int
    fallbacks: int = 0
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (floats rounded, NaN as null)."""
        return {
            name: (None if math.isnan(value) else round(value, 4))
            if isinstance(value, float)
            else value
            for name, value in asdict(self).items()
        }


@dataclass(frozen=True)
class BacktestResult:
    """Scores of every model, its stacked forecasts, and the SARIMAX spec used per origin."""

    scores: list[ModelScore]
    origins: list[object]
    horizon: int
    window: int
    arima_models: list[str] = field(default_factory=list)
    forecasts: dict[str, pd.DataFrame] = field(default_factory=dict)
    weights: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def score(self, model: str) -> ModelScore:
        """The score of ``model`` (one of :data:`MODELS`)."""
        return next(s for s in self.scores if s.model == model)
