"""Hourly demand forecasting: SARIMAX (AIC + recent-error choice), seasonal-naive fallback.

Pure core: no Prefect and no CLI imports, so the ledger (GPU-hours per accelerator type) and
the ``forecast`` command share it. Demand is a non-negative hourly series; every forecast and
interval is clipped at 0. See ``docs/forecast.md`` for the model in plain words.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from prefect_cloudsched.errors import InputError

DAY = 24
WEEK = 168
LEVELS = (80, 95)
MODELS = ("arima", "naive", "seasonal_naive_24", "seasonal_naive_168", "ets")

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
    ``point, lo80, hi80, lo95, hi95``. ``method`` is ``sarimax`` or ``seasonal_naive``;
    ``fallback_reason`` says why the seasonal-naive fallback was used.
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

    def score(self, model: str) -> ModelScore:
        """The score of ``model`` (one of :data:`MODELS`)."""
        return next(s for s in self.scores if s.model == model)


# --------------------------------------------------------------------------- input


def load_series_csv(path: str | Path, column: str = "gpu_hours") -> pd.Series:
    """Read ``hour,<columns...>`` into an hourly series indexed by hour (gaps become NaN).

    Raises:
        InputError: missing/empty/malformed file, missing column (lists the available ones),
            non-numeric or negative value (names the line and hour).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"series file {str(path)!r} does not exist; pass a CSV with an hour column"
        )
    if path.stat().st_size == 0:
        raise InputError(f"series file {str(path)!r} is empty; expected a header 'hour,{column}'")
    malformed = (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError,
                 UnicodeDecodeError)  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # a row with extra fields
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except malformed as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise InputError(f"{path.name} is not a valid CSV ({reason}); fix the file") from None
    if "hour" not in frame.columns:
        raise InputError(f"{path.name} has no 'hour' column; the header must start with 'hour'")
    if column not in frame.columns or column == "hour":
        available = ", ".join(c for c in frame.columns if c != "hour") or "none"
        raise InputError(
            f"{path.name} has no column {column!r}; use --column with one of: {available}"
        )
    if frame.empty:
        raise InputError(f"{path.name} has a header but no rows; add hourly values")
    frame = frame.fillna("")  # rows with missing trailing fields
    lines = [f"{path.name} line {i + 2}" for i in range(len(frame))]
    hours = _parse_numbers(frame["hour"], lines, "hour", allow_blank=False)
    fractional = np.flatnonzero(np.mod(hours, 1) != 0)
    if len(fractional):
        raise InputError(f"{lines[fractional[0]]}: hour must be a whole number of hours")
    rows = [f"{line} (hour {int(h)})" for line, h in zip(lines, hours, strict=True)]
    values = _parse_numbers(frame[column], rows, column, allow_blank=True)
    series = pd.Series(values, index=pd.Index(hours.astype(np.int64), name="hour"), name=column)
    if series.index.has_duplicates:
        dup = series.index[series.index.duplicated()][0]
        raise InputError(f"{path.name}: hour {dup} appears twice; keep one row per hour")
    return series


def _parse_numbers(
    raw: pd.Series, rows: list[str], column: str, *, allow_blank: bool
) -> np.ndarray:
    """Parse one CSV column of non-negative numbers, naming the first bad row.

    Blank cells become NaN (a gap) when ``allow_blank``; anything else must be a finite,
    non-negative number.
    """
    text = raw.str.strip()
    blank = (text == "").to_numpy()
    values = pd.to_numeric(text.where(~blank), errors="coerce").to_numpy(dtype=float)
    bad = (np.isnan(values) & ~blank) | np.isinf(values) | (blank & (not allow_blank))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{rows[i]}: {column} value {raw.iloc[i]!r} is not a number; fix that row")
    negative = np.flatnonzero(values < 0)
    if len(negative):
        i = int(negative[0])
        raise InputError(f"{rows[i]}: {column} is negative ({raw.iloc[i]}); demand must be >= 0")
    return values


def prepare_series(series: pd.Series) -> pd.Series:
    """Validate a demand series and reindex it to a gap-free hourly index (gaps become NaN).

    Integer indexes are hour numbers; a DatetimeIndex must sit on whole hours. SARIMAX then
    treats the NaN hours as missing observations (its Kalman filter skips them), so no value
    is invented for the model; only the baselines and ETS see a linearly interpolated copy.

    Raises:
        InputError: empty, non-numeric or negative series, or an index that is not hourly.
    """
    if len(series) == 0:
        raise InputError("the demand series is empty; give at least one day of hourly values")
    values = pd.to_numeric(series, errors="coerce")
    non_numeric = values.isna() & series.notna()
    if non_numeric.any():
        hour = values.index[non_numeric.to_numpy()][0]
        raise InputError(f"demand at hour {hour} is not a number; pass numbers (NaN for gaps)")
    if (values < 0).any():
        hour = values.index[(values < 0).to_numpy()][0]
        raise InputError(f"demand at hour {hour} is negative; demand must be >= 0")
    values = values.sort_index()
    if values.index.has_duplicates:
        raise InputError("the demand series has duplicate hours; keep one value per hour")
    index = values.index
    if isinstance(index, pd.DatetimeIndex):
        if (index != index.floor("h")).any():
            raise InputError("series timestamps must be on whole hours; resample to hourly first")
        full = pd.date_range(index[0], index[-1], freq="h", name=index.name)
    elif pd.api.types.is_integer_dtype(index):
        full = pd.RangeIndex(int(index[0]), int(index[-1]) + 1, name=index.name or "hour")
    else:
        raise InputError("series index must be integer hours or hourly timestamps")
    out = values.reindex(full).astype(float)
    if out.notna().sum() == 0:
        raise InputError("the demand series has no values; every hour is missing")
    return out


def _future_index(index: pd.Index, horizon: int) -> pd.Index:
    """The ``horizon`` hours after ``index`` (same type)."""
    if isinstance(index, pd.DatetimeIndex):
        return pd.date_range(index[-1] + pd.Timedelta(hours=1), periods=horizon, freq="h",
                             name=index.name)  # fmt: skip
    return pd.RangeIndex(int(index[-1]) + 1, int(index[-1]) + 1 + horizon, name=index.name)


def _json_label(hour) -> object:
    """An hour label JSON can carry: the integer hour or an ISO timestamp."""
    return hour.isoformat() if isinstance(hour, pd.Timestamp) else int(hour)


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


# --------------------------------------------------------------------------- baselines


def _interpolated(y: pd.Series) -> np.ndarray:
    """Gap-free copy for the baselines and ETS, which cannot skip missing hours."""
    return y.interpolate(limit_direction="both").to_numpy(dtype=float)


def _interval_frame(
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
    return _interval_frame(_future_index(y.index, horizon), point, half80, half95)


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
    return _interval_frame(_future_index(y.index, horizon), point, half80, half95)


# --------------------------------------------------------------------------- SARIMAX


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run Kalman filters with single-threaded BLAS.

    Their matrices are tiny, so BLAS threads only add synchronisation: on a busy 2-core host
    a threaded filter pass was 20x slower. ``threadpoolctl`` comes with scikit-learn.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _single_threaded(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _one_blas_thread():
            return func(*args, **kwargs)

    return wrapper


def _endog(y: pd.Series, spec: ModelSpec) -> np.ndarray:
    values = y.to_numpy(dtype=float)
    return np.log1p(values) if spec.log1p else values


def _exog(n: int, spec: ModelSpec, steps: int = 0) -> np.ndarray | None:
    """Daily/weekly Fourier regressors in window time (in-sample, or the next ``steps`` hours).

    Phases count from the window's first hour; coefficients are re-estimated per window.
    """
    periods = [(DAY, spec.daily), (WEEK, spec.weekly)]
    if not any(k for _, k in periods):
        return None
    from statsmodels.tsa.deterministic import DeterministicProcess, Fourier

    terms = [Fourier(period, order=k) for period, k in periods if k]
    process = DeterministicProcess(pd.RangeIndex(n), additional_terms=terms)
    frame = process.out_of_sample(steps) if steps else process.in_sample()
    return frame.to_numpy()


@dataclass(frozen=True)
class ForecastConfig:
    """How SARIMAX candidates are built, chosen and re-fitted.

    Attributes:
        window: trailing hours each fit sees; keeps fits fast and follows regime changes.
        orders: the (order, seasonal_order) AIC grid.
        transform: ``none``, ``log1p`` (spiky counts, zeros allowed) or ``auto`` (AIC of a
            reference ARIMA(1,1,1) on both scales decides, then the grid runs on that scale).
        daily_fourier: daily Fourier pairs offered as regressors with the non-seasonal
            orders (0 = never).
        weekly_fourier: weekly Fourier pairs offered as regressors (0 = never).
        weekly_acf: offer them only when the window's hourly differences correlate at least
            this much at lag 168, i.e. when a weekly pattern is visible in the window.
        ols_fourier: estimate Fourier coefficients by least squares first and the ARMA part
            by ML with them held fixed (much faster); ``False`` estimates all jointly by ML.
        selection: ``validation`` (the default: the AIC picks the best spec within each
            differencing family, and the family winners are compared by their in-window
            ``horizon``-step error, see :func:`select_model`) or ``aic`` (lowest comparable AIC
            over the whole grid).
        validation_days: the most recent in-window day boundaries whose dynamic forecasts
            score the family winners.
        calibrate: rescale intervals from in-sample multi-step errors.
        calibration_days: the most recent in-window days whose errors set that scale.
        maxiter: optimizer iterations per fit.
    """

    window: int = 4 * WEEK
    orders: tuple[tuple[Order, SeasonalOrder], ...] = DEFAULT_ORDERS
    transform: str = "auto"
    daily_fourier: int = 3
    weekly_fourier: int = 2
    weekly_acf: float = 0.2
    ols_fourier: bool = True
    selection: str = "validation"
    validation_days: int = 14
    calibrate: bool = True
    calibration_days: int = 7
    maxiter: int = 50

    def __post_init__(self) -> None:
        if self.transform not in ("none", "log1p", "auto"):
            raise InputError(f"transform {self.transform!r} is unknown; use none, log1p or auto")
        if self.window < 2 * DAY:
            raise InputError(f"window {self.window} is too short; use at least {2 * DAY} hours")
        if not self.orders:
            raise InputError("orders is empty; give at least one (order, seasonal_order) pair")
        if min(self.daily_fourier, self.weekly_fourier) < 0:
            raise InputError("daily_fourier and weekly_fourier must be >= 0 (0 turns them off)")
        if self.selection not in ("aic", "validation"):
            raise InputError(f"selection {self.selection!r} is unknown; use aic or validation")
        if min(self.maxiter, self.calibration_days, self.validation_days) < 1:
            raise InputError("maxiter, calibration_days and validation_days must be >= 1")


@dataclass(frozen=True)
class Selection:
    """The chosen candidate: its spec, fitted results, comparable AIC and validation MAE."""

    spec: ModelSpec
    results: object
    aic: float
    validation_mae: float | None = None


def fit_sarimax(y: pd.Series, spec: ModelSpec, maxiter: int = 50, ols_fourier: bool = False):
    """Fit one candidate by maximum likelihood and filter the full series with the estimate.

    Differenced specs are estimated on the differenced series (statsmodels'
    ``simple_differencing``: conditional ML, a state vector 24 entries smaller, several times
    faster), then the undifferenced model is filtered with those parameters so forecasts,
    intervals and per-hour likelihoods refer to the original series. No covariance matrix is
    computed: only forecasts and likelihoods are used.

    With ``ols_fourier`` the Fourier coefficients are estimated first by least squares (on
    the differenced series for differenced specs, as the estimation model sees it) and held
    fixed while the ARMA part is estimated by ML. The optimizer's numerical gradient then has
    4-10 fewer parameters to perturb, which makes Fourier candidates several times faster.

    Returns:
        Filtered statsmodels results, or ``None`` when the fit fails or is degenerate.
    """
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    def build(simple: bool) -> SARIMAX:
        return SARIMAX(
            _endog(y, spec), exog=_exog(len(y), spec), order=spec.order,
            seasonal_order=spec.seasonal_order, trend=spec.trend, concentrate_scale=True,
            simple_differencing=simple,
        )  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = build(simple=_burn(spec) > 0)
            fixed = _ols_exog(model) if ols_fourier else {}
            with model.fix_params(fixed) if fixed else contextlib.nullcontext():
                estimate = model.fit(disp=False, cov_type="none", maxiter=maxiter)
            res = build(simple=False).filter(estimate.params, cov_type="none")
        except (ValueError, np.linalg.LinAlgError):
            return None
    return res if np.isfinite(res.llf) else None


def _ols_exog(model) -> dict[str, float]:
    """Feasible-GLS coefficients of the model's regressors (one Cochrane-Orcutt step).

    Least squares on the model's own (possibly differenced) endog and exog, with an
    intercept when the model has one; then once more on the series quasi-differenced by the
    residuals' lag-1 autocorrelation. Plain least squares is inefficient when the errors are
    persistent (a d = 0 model of a near-random-walk), and its coefficients then cost several
    log-likelihood units against joint ML; the quasi-differenced step recovers them.
    """
    if model.exog is None:
        return {}
    endog = np.asarray(model.endog, dtype=float).reshape(-1)
    exog = np.asarray(model.exog, dtype=float)
    k = exog.shape[1]

    def solve(target: np.ndarray, regressors: np.ndarray) -> np.ndarray | None:
        ok = ~np.isnan(target) & np.isfinite(regressors).all(axis=1)
        if ok.sum() <= k + 1:
            return None
        design = regressors[ok]
        if model.k_trend:
            design = np.column_stack([np.ones(len(design)), design])
        return np.linalg.lstsq(design, target[ok], rcond=None)[0]

    coef = solve(endog, exog)
    if coef is None:
        return {}
    resid = endog - exog @ coef[-k:] - (coef[0] if model.k_trend else 0.0)
    pairs = ~np.isnan(resid[1:]) & ~np.isnan(resid[:-1])
    if pairs.sum() > k + 2:
        a, b = resid[1:][pairs], resid[:-1][pairs]
        rho = float(np.clip(np.dot(a, b) / max(np.dot(b, b), 1e-300), -0.99, 0.99))
        quasi = solve(endog[1:] - rho * endog[:-1], exog[1:] - rho * exog[:-1])
        coef = coef if quasi is None else quasi
    return dict(zip(model.exog_names, (float(b) for b in coef[-k:]), strict=True))


def _burn(spec: ModelSpec) -> int:
    """Diffuse burn-in hours of a spec: the hours differencing consumes."""
    return spec.order[1] + spec.seasonal_order[1] * spec.seasonal_order[3]


def comparable_aic(res, y: pd.Series, spec: ModelSpec, burn: int) -> float:
    """AIC on a common sample and scale, so differenced/log/level candidates compare fairly.

    Sums the per-hour log-likelihood from hour ``burn`` on (``burn`` = the largest diffuse
    burn-in of the grid), so every candidate scores the same hours conditional on the same
    past. log1p candidates get the Jacobian ``-log(1+y)`` so they are scored on the original
    scale. The concentrated-out variance counts as a parameter.
    """
    llf_obs = np.asarray(res.llf_obs, dtype=float)[burn:]
    observed = y.to_numpy(dtype=float)[burn:]
    keep = ~np.isnan(observed)
    llf = float(llf_obs[keep].sum())
    if spec.log1p:
        llf -= float(np.log1p(observed[keep]).sum())
    return -2.0 * llf + 2.0 * (len(res.params) + 1)


def weekly_pattern(y: pd.Series, lag: int = WEEK) -> float:
    """Autocorrelation of the hourly differences at lag 168 (NaN if under two weeks)."""
    from statsmodels.tsa.stattools import acf

    diffs = y.diff().to_numpy()[1:]
    if np.sum(~np.isnan(diffs)) < 2 * lag:
        return math.nan
    return float(acf(diffs, nlags=lag, missing="conservative")[lag])


def _choose_log1p(y: pd.Series, config: ForecastConfig, burn: int) -> bool:
    """Resolve ``transform``; ``auto`` compares a reference ARIMA(1,1,1) on both scales."""
    if config.transform != "auto":
        return config.transform == "log1p"
    scores = {}
    for log in (False, True):
        spec = ModelSpec((1, 1, 1), log1p=log)
        res = fit_sarimax(y, spec, config.maxiter)
        scores[log] = math.inf if res is None else comparable_aic(res, y, spec, burn)
    return scores[True] < scores[False]


def candidate_specs(y: pd.Series, config: ForecastConfig) -> list[ModelSpec]:
    """The grid to search on this window, all on one scale (see :func:`_choose_log1p`).

    Every order is tried as is; non-seasonal orders also with ``daily_fourier`` daily pairs
    (a fixed daily profile with ARMA errors); everything also with ``weekly_fourier`` weekly
    pairs when a weekly pattern is visible. Seasonal orders need three days of window.
    """
    burn = max(_burn(ModelSpec(o, s)) for o, s in config.orders)
    log = _choose_log1p(y, config, burn)
    weekly = config.weekly_fourier and weekly_pattern(y) >= config.weekly_acf
    weeklies = (0, config.weekly_fourier) if weekly else (0,)
    specs = []
    for order, seasonal in config.orders:
        is_seasonal = any(seasonal[:3])
        if is_seasonal and len(y) < 3 * DAY:
            continue
        dailies = (0,) if is_seasonal or not config.daily_fourier else (0, config.daily_fourier)
        specs += [ModelSpec(order, seasonal, log, d, w) for d in dailies for w in weeklies]
    return specs


def select_model(
    y: pd.Series,
    config: ForecastConfig,
    progress: Callable[[str], None] | None = None,
    horizon: int = DAY,
) -> Selection | None:
    """Fit every candidate and choose one; ``None`` if all fail.

    With ``selection="aic"`` the lowest :func:`comparable_aic` over the whole grid wins. With
    ``selection="validation"`` (the default) the AIC only chooses *within* each differencing
    family (d, D): mean-reverting levels (d = 0), persistence (d = 1), seasonal differencing
    (D = 1), both. One-step likelihoods rank orders within a family well, but they prefer a
    slowly mean-reverting AR over a random walk even when its 24 h forecasts are worse. The
    family winners are therefore compared by :func:`validation_mae`, their mean absolute
    ``horizon``-step error from the last ``config.validation_days`` day boundaries of the
    window. When that cannot be computed (a short window), the AIC winner is kept.
    """
    specs = candidate_specs(y, config)
    burn = max(_burn(spec) for spec in specs)
    best: Selection | None = None
    families: dict[tuple[int, int], Selection] = {}
    for spec in specs:
        if progress:
            progress(spec.label)
        res = fit_sarimax(y, spec, config.maxiter, config.ols_fourier)
        if res is None:
            continue
        candidate = Selection(spec, res, comparable_aic(res, y, spec, burn))
        family = (spec.order[1], spec.seasonal_order[1])
        if family not in families or candidate.aic < families[family].aic:
            families[family] = candidate
        if best is None or candidate.aic < best.aic:
            best = candidate
    if best is None or config.selection == "aic" or len(families) < 2:
        return best
    scored = [
        (validation_mae(sel.results, y, sel.spec, horizon, config.validation_days, burn), sel)
        for sel in families.values()
    ]
    scored = [(mae, sel) for mae, sel in scored if np.isfinite(mae)]
    if not scored:
        return best
    mae, chosen = min(scored, key=lambda pair: pair[0])
    return Selection(chosen.spec, chosen.results, chosen.aic, mae)


def dynamic_points(res, starts: Sequence[int], horizon: int) -> np.ndarray:
    """Dynamic ``horizon``-step point forecasts (model scale) from in-sample positions.

    Row ``i`` equals ``res.get_prediction(start=starts[i], dynamic=True)``'s first
    ``horizon`` means: the state space is iterated from the one-step predicted state at each
    start, without using observations from the start on. Vectorised over starts, so scoring
    two weeks of origins costs a few small matrix products instead of a filter pass each.
    """
    ssm = res.model.ssm
    design, transition = np.asarray(ssm["design"]), np.asarray(ssm["transition"])
    c, d = np.asarray(ssm["state_intercept"]), np.asarray(ssm["obs_intercept"])
    start = np.asarray(starts, dtype=int)
    state = np.asarray(res.predicted_state)[:, start]
    last = res.model.nobs - 1
    out = np.empty((len(start), horizon))
    for h in range(horizon):
        t = np.minimum(start + h, last)
        z = design if design.ndim == 2 else design[..., 0]
        out[:, h] = (z @ state)[0] + (d[0] if d.ndim == 1 else d[0, t])
        move = transition if transition.ndim == 2 else transition[..., 0]
        state = move @ state + (c[:, None] if c.ndim == 1 else c[:, t])
    return out


def validation_mae(
    res, y: pd.Series, spec: ModelSpec, horizon: int, days: int, burn: int = 0
) -> float:
    """Mean absolute error (original scale) of in-window dynamic ``horizon``-step forecasts.

    The forecasts start at the last ``days`` day boundaries that leave ``horizon`` hours
    inside the window and at least a day after the ``burn``-in; the parameters are those
    fitted on the whole window. Each day's MAE is averaged (missing hours skipped). NaN when
    no such boundary exists.
    """
    n = len(y)
    starts = [s for s in (n - horizon - DAY * k for k in range(days)) if s >= burn + DAY]
    if not starts:
        return math.nan
    points = dynamic_points(res, starts, horizon)
    if spec.log1p:
        points = np.expm1(points)
    observed = y.to_numpy(dtype=float)
    actual = np.stack([observed[s : s + horizon] for s in starts])
    errors = np.abs(actual - points)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a day with every hour missing
        daily = np.nanmean(errors, axis=1)
        return float(np.nanmean(daily)) if np.isfinite(daily).any() else math.nan


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
    res, y: pd.Series, spec: ModelSpec, horizon: int, scale: tuple[float, float]
) -> pd.DataFrame:
    """Point forecast and scaled Gaussian intervals, back-transformed and clipped at 0.

    With log1p the back-transformed point is the median, which is what MAE rewards.
    """
    fc = res.get_forecast(horizon, exog=_exog(len(y), spec, steps=horizon))
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


@_single_threaded
def fit_forecast(
    series: pd.Series,
    horizon: int = DAY,
    config: ForecastConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> Forecast:
    """Forecast the next ``horizon`` hours of an hourly demand series.

    Fits every SARIMAX candidate of the grid on the trailing ``config.window`` hours and
    chooses one (:func:`select_model`: AIC within each differencing family, the family by
    in-window ``horizon``-step error; or plain AIC). Falls back to seasonal-naive(24), with
    ``fallback_reason`` set, when the history has fewer than two days of observed hours or
    every candidate fails.

    Args:
        series: hourly demand (integer-hour or hourly DatetimeIndex); gaps may be NaN/missing.
        horizon: hours to forecast (>= 1).
        config: grid, transform, window...; defaults to :class:`ForecastConfig()`.
        progress: called with each candidate's label before it is fitted.

    Raises:
        InputError: bad series, ``horizon < 1`` or under one day of history.
    """
    config = config or ForecastConfig()
    _check_positive(horizon=horizon)
    return _forecast_window(prepare_series(series).iloc[-config.window :], horizon, config,
                            progress)  # fmt: skip


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


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise InputError(f"{name} must be at least 1 (got {value})")


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
