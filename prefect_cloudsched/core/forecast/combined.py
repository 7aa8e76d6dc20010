"""The combined forecaster: SARIMAX backbone plus ETS, Theta and the naive members.

At one origin every member is fitted on the trailing window and forecasts ``horizon`` hours
from the last ``config.combine_days`` in-window day boundaries (:mod:`.members`). The weights
are inverse-squared-MAE weights over those days, pulled towards least-absolute-deviation
stacked weights (``w >= 0, sum(w) = 1``, a linear programme) just as far as needed to be no
worse than the best member on those days; the stacked weights themselves always are, because
every single member is a feasible point. The intervals are conformal: the combination's
in-window errors, each from weights fitted without its own day (cross-fitting, so the errors are
out-of-sample in the weights too), scaled by the local volatility at their start, give
per-step quantiles weighted towards recent days (pooling more neighbouring steps when a short
window has too few days to resolve the 95 % level), rescaled by the volatility at the window's
end (so they widen after a level shift). When origins follow each other (a warm start),
adaptive conformal inference also moves the quantile levels: up after a day whose hours fell
outside the last intervals more often than claimed, down after one that fell inside more
often, and a width factor per level tracks the same misses multiplicatively (quantile
tracking), which still reacts when the few in-window scores make a small level change move no
quantile.
See docs/forecast.md, "The combined forecaster".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from prefect_cloudsched.core.forecast.baselines import interval_frame, lag_forecast
from prefect_cloudsched.core.forecast.members import (
    MemberFit,
    baseline_members,
    ets_member,
    sarimax_member,
    theta_member,
    validation_starts,
)
from prefect_cloudsched.core.forecast.sarimax import (
    ForecastConfig,
    Selection,
    _burn,
    fit_sarimax,
    interval_scale,
    refilter,
    sarimax_frame,
    select_model,
)
from prefect_cloudsched.core.forecast.series import future_index
from prefect_cloudsched.core.forecast.types import DAY, LEVELS, WEEK, Forecast
from prefect_cloudsched.errors import InputError

#: Tracked interval width factors stay within [1 / this, this] of the conformal width.
WIDTH_FACTOR_BOUND = 2.0


@dataclass(frozen=True)
class WarmStart:
    """What a later origin may reuse: the SARIMAX choice and parameters, ETS parameters.

    ``age`` is how many hours the window has moved since they were estimated. ``miss_rates``
    are the adaptive conformal miss-rate targets (80 %, 95 % level) the next origin starts
    from, ``width_factors`` the tracked multipliers of the two half-widths, and
    ``last_frame`` the combined forecast whose hours it checks both against.
    """

    selection: Selection | None
    ets_params: dict[str, float] | None
    age: int = 0
    grid_age: int = 0
    arima_scale: tuple[float, float] | None = None
    miss_rates: tuple[float, float] = tuple(1 - level / 100 for level in LEVELS)
    width_factors: tuple[float, float] = (1.0, 1.0)
    last_frame: pd.DataFrame | None = None

    def moved(self, hours: int) -> WarmStart:
        """The same estimates, ``hours`` later."""
        return replace(self, age=self.age + hours, grid_age=self.grid_age + hours)


@dataclass(frozen=True)
class CombinedFit:
    """One origin: the combined forecast, every member's own frame, and the warm start."""

    forecast: Forecast
    member_frames: dict[str, pd.DataFrame]
    weights: dict[str, float]
    validation_mae: dict[str, float]
    warm: WarmStart
    arima_fallback: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


def combined_window(
    y: pd.Series,
    horizon: int,
    config: ForecastConfig,
    warm: WarmStart | None = None,
    progress: Callable[[str], None] | None = None,
    arima_intervals: bool = False,
) -> CombinedFit:
    """Fit every member on the prepared window ``y`` and combine them (module docstring).

    ``warm`` (from the previous origin) skips re-estimation while younger than
    ``config.reselect_days`` days. ``arima_intervals`` also builds the pure ARIMA's own
    recalibrated Gaussian intervals (the backtest scores them).

    Raises:
        InputError: fewer than two days plus the validation horizon of history.
    """
    check_horizon = min(horizon, WEEK)
    values = y.interpolate(limit_direction="both").to_numpy(dtype=float)
    starts = _starts(y, check_horizon, config)
    clock = time.perf_counter()
    fits = [*baseline_members(values, starts, horizon), theta_member(values, starts, horizon)]
    ets_fit, ets_params = _ets(values, starts, horizon, warm, config)
    fits.append(ets_fit)
    seconds = {"baselines": time.perf_counter() - clock}
    clock = time.perf_counter()
    selection, res, phase, how = _sarimax(y, horizon, config, warm, progress)
    arima_frame, scale = None, None
    if res is not None:
        fits.insert(0, sarimax_member(res, selection.spec, y, starts, horizon, phase))
        if arima_intervals:  # its own calibration, re-measured only when re-estimated
            scale = warm.arima_scale if how == "refilter" else None
            if scale is None:
                scale = interval_scale(res, y, selection.spec, horizon, config.calibration_days)
            arima_frame = sarimax_frame(res, y, selection.spec, horizon, scale, phase)
    seconds["sarimax"] = time.perf_counter() - clock
    fits = [f for f in fits if f.name in config.members]
    actual = np.stack([y.to_numpy(dtype=float)[s : s + check_horizon] for s in starts])
    miss_rates = adapted_miss_rates(warm, y, config.aci_gamma)
    factors = tracked_width_factors(warm, y, config.width_eta)
    frame, members, weights, maes = _combine(
        fits, actual, y.to_numpy(dtype=float), starts, y.index, config, miss_rates, factors
    )
    if arima_intervals:
        members["arima"] = arima_frame if arima_frame is not None else lag_forecast(y, horizon, DAY)
    label = " + ".join(
        f"{w:.2f} {name}"
        for name, w in sorted(weights.items(), key=lambda kv: -kv[1])
        if w >= 0.005
    )
    forecast = Forecast(
        frame, "combined", f"combined: {label}", selection.spec if selection else None,
        selection.aic if selection else None, fit_seconds=sum(seconds.values()),
        validation_mae=maes["combined"], weights=weights,
        members={f.name: f.label for f in fits},
    )  # fmt: skip
    new_warm = replace(
        _next_warm(warm, selection, ets_params, how, scale), miss_rates=miss_rates,
        width_factors=factors, last_frame=frame,
    )  # fmt: skip
    return CombinedFit(forecast, members, weights, maes, new_warm, res is None, seconds)


def _starts(y: pd.Series, check_horizon: int, config: ForecastConfig) -> list[int]:
    """In-window validation starts: a week in when the window allows, else two days in."""
    n = len(y)
    first = WEEK if n - check_horizon - WEEK >= 3 * DAY else 2 * DAY
    starts = validation_starts(n, check_horizon, config.combine_days, first)
    observed = int(y.notna().sum())
    if observed < 2 * DAY:
        raise InputError(
            f"history has {observed} observed hours (of {n}); the combined forecast needs at "
            f"least {2 * DAY}"
        )
    if len(starts) < 2:
        raise InputError(
            f"series has {n} hours; the combined forecast needs at least "
            f"{3 * DAY + check_horizon} (three days plus the horizon, up to a week)"
        )
    return starts


def adapted_miss_rates(warm: WarmStart | None, y: pd.Series, gamma: float) -> tuple[float, float]:
    """Adaptive conformal inference (Gibbs & Candes 2021), one step per origin.

    Each level's miss-rate target ``a`` moves by ``gamma * (nominal - observed)``, where
    ``observed`` is the share of the previous forecast's hours now in ``y`` that fell outside
    its interval; kept in [0, 0.5]. Without a previous forecast (a single run) the targets
    are nominal or the warm start's.
    """
    nominal = tuple(1 - level / 100 for level in LEVELS)
    if warm is None:
        return nominal
    observed = observed_miss_rates(warm, y) if gamma else None
    if observed is None:
        return warm.miss_rates
    rates = [
        min(max(target + gamma * (goal - seen), 0.0), 0.5)
        for target, goal, seen in zip(warm.miss_rates, nominal, observed, strict=True)
    ]
    return rates[0], rates[1]


def tracked_width_factors(
    warm: WarmStart | None, y: pd.Series, eta: float, bound: float = WIDTH_FACTOR_BOUND
) -> tuple[float, float]:
    """Quantile tracking of the half-widths, one multiplicative step per origin.

    Each level's factor ``f`` becomes ``f * exp(eta * (observed - nominal) / nominal)``, kept
    in ``[1 / bound, bound]``: a day whose miss rate was twice the nominal one widens the
    next interval by ``exp(eta)``, a day without misses narrows it by ``exp(-eta)``. Unlike
    the level step of :func:`adapted_miss_rates`, this moves the width even when the 14 days
    of pooled scores are too few for a small level change to reach another score (the 95 %
    quantile of ~70 scores sits among the largest few). Angelopoulos, Candes & Tibshirani
    (2023, "Conformal PID control"), the quantile-tracking term, on the log scale.
    """
    if warm is None:
        return 1.0, 1.0
    observed = observed_miss_rates(warm, y) if eta else None
    if observed is None:
        return warm.width_factors
    factors = []
    for factor, level, seen in zip(warm.width_factors, LEVELS, observed, strict=True):
        nominal = 1 - level / 100
        step = math.log(factor) + eta * (seen - nominal) / nominal
        factors.append(math.exp(min(max(step, -math.log(bound)), math.log(bound))))
    return factors[0], factors[1]


def observed_miss_rates(warm: WarmStart, y: pd.Series) -> tuple[float, float] | None:
    """Share of the previous forecast's hours, now in ``y``, outside its 80 % and 95 %
    intervals; None without a previous forecast or without any of its hours observed."""
    if warm.last_frame is None:
        return None
    seen = y.reindex(warm.last_frame.index).to_numpy(dtype=float)
    known = np.isfinite(seen)
    if not known.any():
        return None
    rates = []
    for level in LEVELS:
        lo = warm.last_frame[f"lo{level}"].to_numpy()[known]
        hi = warm.last_frame[f"hi{level}"].to_numpy()[known]
        rates.append(float(((seen[known] < lo) | (seen[known] > hi)).mean()))
    return rates[0], rates[1]


def _combine(fits, actual, values, starts, index, config, miss_rates=None, factors=None):
    """Weights from the members' paths, then the combined and the members' conformal frames.

    ``values`` are the window's observed values (NaN in gaps), for the volatility scales.

    Returns ``(frame, member_frames, weights, validation_maes)``.
    """
    horizon = len(fits[0].future)
    paths = np.stack([f.paths[:, : actual.shape[1]] for f in fits])
    weights = stack_weights(paths, actual, config.stack_shrink)
    combined_paths = np.tensordot(weights, paths, axes=1)
    scale_at_starts = [_local_scale(values, s) for s in starts]
    scale_now = _local_scale(values, len(values))
    future = future_index(index, horizon)
    pool = pool_for_starts(len(starts), config.conformal_pool, config.conformal_decay)

    def frame_of(point, residuals, rates=None, widths=None) -> pd.DataFrame:
        return conformal_frame(future, point, residuals, scale_at_starts, scale_now,
                               pool, config.conformal_decay, rates, widths)  # fmt: skip

    point = np.tensordot(weights, np.stack([f.future for f in fits]), axes=1)
    members = {f.name: frame_of(f.future, actual - p) for f, p in zip(fits, paths, strict=True)}
    maes = {f.name: _mae(actual, p) for f, p in zip(fits, paths, strict=True)}
    maes["combined"] = _mae(actual, combined_paths)
    weight_map = {f.name: float(w) for f, w in zip(fits, weights, strict=True)}
    honest = crossfit_residuals(paths, actual, config.stack_shrink, config.crossfit_folds)
    return frame_of(point, honest, miss_rates, factors), members, weight_map, maes


def pool_for_starts(starts: int, pool: int, decay: float, level: float = max(LEVELS)) -> int:
    """The fewest neighbouring steps (at least ``pool``) to pool on each side so that the
    weighted conformal quantile of ``starts`` days can resolve ``level`` %.

    The quantile needs a total score weight of ``level / (100 - level)`` times the newest
    day's weight (19 at 95 %), else it is just the largest score. A full window (14 days at
    decay 0.85, five pooled steps: 28) has it; a trace's first days do not (four days: 16),
    and GenAI's five development origins covered 85 % at 95 %.
    """
    mass = sum(decay**k for k in range(starts))
    need = level / (100 - level)
    return max(pool, math.ceil((need / max(mass, 1e-12) - 1) / 2))


def crossfit_residuals(
    paths: np.ndarray, actual: np.ndarray, shrink: float, folds: int
) -> np.ndarray:
    """The combination's validation errors, each day's from weights fitted without it.

    The days are split into ``folds`` contiguous blocks; a block's errors use the
    :func:`stack_weights` of the other blocks. Errors of in-sample weights are optimistic
    (the weights were chosen to make exactly them small), which made the intervals too narrow.
    """
    days = actual.shape[0]
    residuals = np.empty_like(actual)
    for block in np.array_split(np.arange(days), min(folds, days)):
        keep = np.setdiff1d(np.arange(days), block)
        weights = stack_weights(paths[:, keep], actual[keep], shrink)
        residuals[block] = actual[block] - np.tensordot(weights, paths[:, block], axes=1)
    return residuals


def _sarimax(y, horizon, config, warm, progress):
    """SARIMAX for this window: ``(selection, results, phase, how)``.

    Re-filters the warm estimate while it is younger than ``reselect_days``; re-estimates the
    warm spec from its parameters while the grid search is younger than ``regrid_days``;
    otherwise searches the grid (:func:`select_model`).
    """
    if warm is not None and warm.selection is not None:
        spec, params = warm.selection.spec, warm.selection.results.params
        if warm.age < config.reselect_days * DAY:
            res = refilter(y, spec, params, warm.age)
            if res is not None:
                return warm.selection, res, warm.age, "refilter"
        if warm.grid_age < config.regrid_days * DAY:
            res = fit_sarimax(y, spec, config.maxiter, config.ols_fourier, np.asarray(params))
            if res is not None:
                return Selection(spec, res, warm.selection.aic), res, 0, "refit"
    if len(y) < 2 * DAY + max(_burn_of(config), 1):
        return None, None, 0, "none"
    selection = select_model(y, config, progress, min(horizon, DAY))
    if selection is None:
        return None, None, 0, "none"
    return selection, selection.results, 0, "grid"


def _burn_of(config: ForecastConfig) -> int:
    from prefect_cloudsched.core.forecast.types import ModelSpec

    return max(_burn(ModelSpec(o, s)) for o, s in config.orders)


def _ets(values, starts, horizon, warm, config):
    """ETS from the warm smoothing parameters while young enough, else estimated afresh."""
    young = warm is not None and warm.age < config.reselect_days * DAY
    params = warm.ets_params if young else None
    try:
        return ets_member(values, starts, horizon, params)
    except (ValueError, np.linalg.LinAlgError):
        paths = np.full((len(starts), horizon), np.nan)
        return MemberFit("ets", paths, np.full(horizon, np.nan), "ETS failed"), None


def _next_warm(warm, selection, ets_params, how, arima_scale) -> WarmStart:
    """Keep ages while estimates were reused; restart the clocks that were re-estimated."""
    if how == "refilter":
        return replace(warm, arima_scale=arima_scale)
    grid_age = warm.grid_age if how == "refit" and warm is not None else 0
    return WarmStart(selection, ets_params, 0, grid_age, arima_scale)


def stack_weights(paths: np.ndarray, actual: np.ndarray, shrink: float = 0.0) -> np.ndarray:
    """Simplex weights minimising the MAE of ``sum_m w_m paths[m]`` against ``actual``.

    Least-absolute-deviation stacking as a linear programme (HiGHS via scipy). With
    ``shrink > 0`` the result is pulled up to that far (in steps of 0.1) towards
    inverse-squared-MAE weights, as far as the blend stays no worse than the best single
    member on validation: stacked weights alone overfit the few validation days and jump
    between members from one day to the next. Members whose paths hold NaN get 0. With
    ``shrink=1`` and inverse weights that already pass that test (about 4 fits in 9 on the
    benchmark's traces) the result is those weights, so the programme is not solved.
    """
    m = paths.shape[0]
    ok_member = np.isfinite(paths).reshape(m, -1).all(axis=1)
    rows = np.isfinite(actual).reshape(-1)
    design = paths.reshape(m, -1)[:, rows][ok_member].T  # (N, m_ok)
    target = actual.reshape(-1)[rows]
    member_mae = np.abs(design - target[:, None]).mean(axis=0)
    weights = np.zeros(design.shape[1])
    weights[int(np.argmin(member_mae))] = 1.0
    if len(weights) > 1 and len(target):
        inverse = 1 / np.maximum(member_mae, 1e-12) ** 2
        inverse /= inverse.sum()
        full_step = round(shrink * 10) == 10
        if full_step and np.abs(design @ inverse - target).mean() <= member_mae.min():
            weights = inverse  # what _shrunk returns first; the stacked weights do not matter
        else:
            stacked = _lad_weights(design, target, weights)
            weights = _shrunk(stacked, inverse, shrink, design, target)
    full = np.zeros(m)
    full[ok_member] = weights
    return full


def _lad_weights(design: np.ndarray, target: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Least-absolute-deviation simplex weights, or ``best`` (the best member alone) when the
    programme fails or its solution is not below the best member's MAE."""
    from scipy import sparse
    from scipy.optimize import linprog

    k, count = design.shape[1], design.shape[0]
    member_mae = np.abs(design - target[:, None]).mean(axis=0)
    weights = best
    # variables: w (k), e+ (N), e- (N); design @ w + e- - e+ = target (sparse: the
    # identity blocks would be dense N x N, and the fit runs once per cross-fitting fold)
    cost = np.concatenate([np.zeros(k), np.ones(2 * count)]) / count
    identity = sparse.identity(count, format="csr")
    a_eq = sparse.vstack(
        [
            sparse.hstack([sparse.csr_matrix(design), -identity, identity]),
            sparse.hstack([sparse.csr_matrix(np.ones((1, k))), sparse.csr_matrix((1, 2 * count))]),
        ],
        format="csc",
    )
    b_eq = np.append(target, 1.0)
    out = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if out.status == 0:
        lp = np.clip(out.x[:k], 0, None)
        lp /= lp.sum()
        if np.abs(design @ lp - target).mean() <= member_mae.min() + 1e-12:
            weights = lp
    return weights


def _shrunk(stacked, inverse, shrink, design, target) -> np.ndarray:
    """The largest step (<= ``shrink``) from the stacked towards the inverse-error weights
    whose validation MAE is still no worse than the best member's (the stacked one is)."""
    bound = np.abs(design - target[:, None]).mean(axis=0).min()
    for step in np.arange(round(shrink * 10), 0, -1) / 10:
        blend = (1 - step) * stacked + step * inverse
        if np.abs(design @ blend - target).mean() <= bound:
            return blend
    return stacked


def conformal_frame(
    index: pd.Index,
    point: np.ndarray,
    residuals: np.ndarray,
    scale_at_starts: list[float],
    scale_now: float,
    pool: int = 2,
    decay: float = 1.0,
    miss_rates: tuple[float, float] | None = None,
    width_factors: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Point forecast with conformal 80/95% intervals, clipped at 0.

    ``residuals`` (starts x steps, oldest start first, a day apart) are out-of-sample errors
    from in-window starts; divided by the local volatility at their start they are
    comparable scores. Step ``h`` uses the scores of steps ``h-pool..h+pool``. Each start's
    scores weigh ``decay ** age`` (age in starts); the quantile is the weighted conformal one
    (Barber, Candes, Ramdas & Tibshirani 2023): the smallest score whose weighted rank, with
    the forecast itself counted at the newest weight, reaches the level. ``decay=1`` is plain
    split conformal, rank ``ceil((N+1)q)``. The half-width is that quantile times the
    volatility now. Steps past the validated ones take :func:`beyond_quantile`.
    ``miss_rates`` (adaptive conformal, :func:`adapted_miss_rates`) replace the nominal
    1 - level of the 80 % and 95 % intervals; ``width_factors`` (:func:`tracked_width_factors`)
    multiply their half-widths. The 95 % interval is never narrower than the 80 %.
    """
    scores = np.abs(residuals) / np.asarray(scale_at_starts, dtype=float)[:, None]
    starts, steps = scores.shape
    start_weight = decay ** np.arange(starts - 1, -1, -1, dtype=float)
    rates = miss_rates or tuple(1 - level / 100 for level in LEVELS)
    q = np.empty((len(LEVELS), steps))
    for h in range(steps):  # one sort of a step's pooled scores serves both levels
        pooled = scores[:, max(0, h - pool) : h + pool + 1]
        weights = np.broadcast_to(start_weight[:, None], pooled.shape)
        q[:, h] = weighted_conformal_quantiles(
            pooled.reshape(-1), weights.reshape(-1), [100 * (1 - rate) for rate in rates]
        )
    halves = {}
    for level, row, factor in zip(LEVELS, q, width_factors or (1.0, 1.0), strict=True):
        row = pd.Series(row).ffill().bfill().fillna(0.0).to_numpy()
        extended = np.concatenate([row, np.full(max(0, len(point) - steps), beyond_quantile(row))])
        halves[level] = extended[: len(point)] * scale_now * factor
    halves[95] = np.maximum(halves[95], halves[80])
    return interval_frame(index, np.nan_to_num(point), halves[80], halves[95])


def beyond_quantile(row: np.ndarray) -> float:
    """The quantile for steps past the validated ones: the median of the validated steps'
    own quantiles ``row`` over the later half of the validated horizon (days 4-7 of a week).

    The last validated step alone is a poor stand-in: its pooled steps are cut off at the
    horizon's end (so its 95 % level is often just the largest score), and the newest start's
    last hours are the window's last hours, so a level shift there decides it (after the
    drop that ends the Helios trace, it was 8x the median step). The median of the longest
    validated lead times follows how wide the errors grew over the week without letting
    a few extreme steps decide it; past the week it stays flat, as no validation error says
    how much further it grows.
    """
    return float(np.median(row[len(row) // 2 :]))


def weighted_conformal_quantile(scores: np.ndarray, weights: np.ndarray, level: float) -> float:
    """The smallest score whose cumulative weight, out of the total plus the test point's
    (the largest weight), reaches ``level`` %; the largest score when none does (too few
    scores for that level). NaN scores are skipped; none left gives NaN."""
    return weighted_conformal_quantiles(scores, weights, [level])[0]


def weighted_conformal_quantiles(
    scores: np.ndarray, weights: np.ndarray, levels: Sequence[float]
) -> list[float]:
    """:func:`weighted_conformal_quantile` at several ``levels`` (%) from one sort."""
    finite = np.isfinite(scores)
    scores, weights = scores[finite], weights[finite]
    if len(scores) == 0:
        return [math.nan] * len(levels)
    order = np.argsort(scores, kind="stable")
    share = np.cumsum(weights[order]) / (weights.sum() + weights.max())
    ranks = np.searchsorted(share, np.asarray(levels, dtype=float) / 100 - 1e-12)
    return [float(scores[order][min(int(rank), len(scores) - 1)]) for rank in ranks]


def _local_scale(values: np.ndarray, end: int) -> float:
    """Mean absolute hourly change over the day before ``end`` (floored for flat stretches).

    Only changes between two observed hours count (NaN marks a gap): a linearly filled gap
    changes by the same small step every hour, which made the scale of a start just after a
    30-hour gap a fraction of the real one and its scores, so the 95 % width, about 5x too
    large. With under half of the day's changes observed, the window's mean change is
    used.
    """
    changes = np.abs(np.diff(values))
    changes = changes[np.isfinite(changes)] if len(changes) else changes
    overall = changes.mean() if len(changes) else 0.0
    recent = np.abs(np.diff(values[max(0, end - DAY - 1) : end]))
    recent = recent[np.isfinite(recent)]
    local = recent.mean() if len(recent) >= DAY // 2 else overall
    return float(max(local, 0.1 * overall, 1e-9))


def _mae(actual: np.ndarray, predicted: np.ndarray) -> float:
    err = np.abs(actual - predicted)
    return float(np.nanmean(err)) if np.isfinite(err).any() else math.nan
