"""SARIMAX candidates: the grid, estimation, comparable AIC and the model choice."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from prefect_cloudsched.core.forecast.series import future_index
from prefect_cloudsched.core.forecast.types import (
    DAY,
    DEFAULT_ORDERS,
    LEVELS,
    MEMBERS,
    WEEK,
    ModelSpec,
    Order,
    SeasonalOrder,
)
from prefect_cloudsched.errors import InputError

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


def _exog(n: int, spec: ModelSpec, steps: int = 0, phase: int = 0) -> np.ndarray | None:
    """Daily/weekly Fourier regressors in window time (in-sample, or the next ``steps`` hours).

    Phases count from ``phase`` hours before the window's first hour: 0 when the
    coefficients are estimated on this window, the window's shift since estimation when
    parameters estimated on an earlier window are reused (:func:`refilter`).
    """
    periods = [(DAY, spec.daily), (WEEK, spec.weekly)]
    if not any(k for _, k in periods):
        return None
    from statsmodels.tsa.deterministic import DeterministicProcess, Fourier

    terms = [Fourier(period, order=k) for period, k in periods if k]
    process = DeterministicProcess(pd.RangeIndex(n + phase), additional_terms=terms)
    frame = process.out_of_sample(steps) if steps else process.in_sample().iloc[phase:]
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
        members: the combined forecaster's members (see :data:`.types.MEMBERS`).
        combine_days: in-window day boundaries whose forecasts set the combination weights
            and the conformal intervals.
        reselect_days: when origins follow each other (a backtest, a daily run), re-estimate
            SARIMAX (the chosen spec, warm-started) and ETS only every this many days and
            re-filter in between.
        regrid_days: ... and search the whole SARIMAX grid again only every this many days.
        stack_shrink: how far (0..1) the weights may move from the stacked ones towards
            inverse-squared-MAE weights while staying no worse than the best member on
            validation (0 = pure least-absolute-deviation stacking).
        conformal_pool: neighbouring horizon steps pooled on each side for a step's quantile.
        conformal_decay: weight of a validation day's errors per day of age in the conformal
            quantile (1 = plain split conformal; below 1 the recent days count more, so the
            intervals follow a change in how wrong the forecasts are).
        crossfit_folds: the combination's validation errors, which set the intervals, come
            from weights fitted without their own day (this many contiguous folds of days);
            in-sample weights would make the errors, and so the intervals, too small.
        aci_gamma: adaptive conformal step when origins follow each other (a backtest, a daily
            run with a warm start): how far a day's observed miss rate moves the quantile
            level of the next origin's intervals (0 = off).
        width_eta: quantile-tracking step of the same chained runs: a day's miss rate
            relative to the nominal one moves the log of each interval's width factor by
            this much per unit (0 = off; the factor stays within [1/2, 2]).
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
    members: tuple[str, ...] = MEMBERS
    combine_days: int = 14
    reselect_days: int = 7
    regrid_days: int = 28
    stack_shrink: float = 1.0
    conformal_pool: int = 2
    conformal_decay: float = 0.85
    crossfit_folds: int = 4
    aci_gamma: float = 0.1
    width_eta: float = 0.1

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
        unknown = [m for m in self.members if m not in MEMBERS]
        if unknown or not self.members:
            raise InputError(
                f"members {unknown or '()'} invalid; use some of: {', '.join(MEMBERS)}"
            )
        if (
            min(self.combine_days, self.reselect_days, self.regrid_days) < 1
            or self.conformal_pool < 0
        ):
            raise InputError("combine/reselect/regrid_days must be >= 1, conformal_pool >= 0")
        if not 0 <= self.stack_shrink <= 1:
            raise InputError(f"stack_shrink must be in [0, 1] (got {self.stack_shrink})")
        if not 0 < self.conformal_decay <= 1:
            raise InputError(f"conformal_decay must be in (0, 1] (got {self.conformal_decay})")
        if not 0 <= self.aci_gamma <= 1:
            raise InputError(f"aci_gamma must be in [0, 1] (got {self.aci_gamma})")
        if not 0 <= self.width_eta <= 1:
            raise InputError(f"width_eta must be in [0, 1] (got {self.width_eta})")
        if self.crossfit_folds < 2:
            raise InputError(f"crossfit_folds must be >= 2 (got {self.crossfit_folds})")


@dataclass(frozen=True)
class Selection:
    """The chosen candidate: its spec, fitted results, comparable AIC and validation MAE."""

    spec: ModelSpec
    results: object
    aic: float
    validation_mae: float | None = None


def fit_sarimax(
    y: pd.Series,
    spec: ModelSpec,
    maxiter: int = 50,
    ols_fourier: bool = False,
    start_params: np.ndarray | None = None,
):
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

    ``start_params`` (a full parameter vector, e.g. last week's estimate) warm-starts the
    optimizer, which then needs a fraction of the iterations.

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
                warm = {} if start_params is None else {"start_params": start_params}
                if warm and fixed:
                    warm["includes_fixed"] = True
                estimate = model.fit(disp=False, cov_type="none", maxiter=maxiter, **warm)
            res = build(simple=False).filter(estimate.params, cov_type="none")
        except (ValueError, np.linalg.LinAlgError):
            return None
    return res if np.isfinite(res.llf) else None


def refilter(y: pd.Series, spec: ModelSpec, params: np.ndarray, phase: int = 0):
    """Filter a window with parameters estimated earlier: a warm start with no re-estimation.

    A daily backtest (or a daily production run) re-estimates weekly; in between, the new
    hours only move the Kalman state. ``phase`` is the window's shift in hours since the
    estimation window, so the Fourier regressors keep their phase. ``None`` on failure.
    """
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = SARIMAX(
                _endog(y, spec), exog=_exog(len(y), spec, phase=phase), order=spec.order,
                seasonal_order=spec.seasonal_order, trend=spec.trend, concentrate_scale=True,
            )  # fmt: skip
            res = model.filter(params, cov_type="none")
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
    frame = pd.DataFrame(cols, index=future_index(y.index, horizon))
    return frame[["point", "lo80", "hi80", "lo95", "hi95"]].clip(lower=0.0)
