"""Demand-forecast benchmark: rolling 24 h-ahead backtest of all five models on real traces.

Run: ``.venv/bin/python bench/bench_forecast.py`` (about 3 minutes on 2 cores).

For every hourly series in ``bench/data/`` (see its SOURCE.md) the backtest of
:func:`prefect_cloudsched.core.forecast.backtest` runs twice with the default ``ForecastConfig``:

* **held-out**: the last 14 daily origins (the last 14 days of the series). This is the
  reported result; nothing was tuned on it.
* **development**: up to 14 origins just before those, i.e. ending where held-out starts.
  The grid, window, Fourier options, the selection rule and interval calibration were
  chosen on this slice. ``--slice development`` runs only this slice (``--out`` renames the
  results files), so a change can be judged without looking at held-out numbers.

Targets (held-out): ARIMA MASE <= 0.90 x the better of naive and seasonal_naive_24, and
80% interval coverage within [75%, 85%]. Writes ``results/forecast.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import write

from prefect_cloudsched.core.forecast import (
    DAY,
    MODELS,
    ForecastConfig,
    backtest,
    load_series_csv,
    prepare_series,
)

DATA = Path(__file__).resolve().parent / "data"
ORIGINS = 14
HORIZON = DAY
MASE_RATIO_TARGET = 0.90
COVERAGE80_TARGET = (0.75, 0.85)
SERIES = (
    ("alibaba_gpu2023", "alibaba_gpu2023_hourly.csv", "gpu_hours"),
    ("alibaba_genai2026", "alibaba_genai2026_hourly.csv", "gpu_hours"),
    ("helios_venus", "helios_venus_hourly.csv", "gpu_hours"),
    ("philly", "philly_nodes_series.csv", "active_node_hours"),
)
SLICES = ("held-out", "development")


def run_one(name: str, file: str, column: str, slice_: str) -> dict[str, Any]:
    """Backtest one series on one slice; the development slice ends where held-out starts."""
    series = prepare_series(load_series_csv(DATA / file, column))
    origins = ORIGINS
    if slice_ == "development":
        series = series.iloc[: -ORIGINS * DAY]
        origins = min(ORIGINS, (len(series) - HORIZON - 2 * DAY) // DAY + 1)
    started = time.perf_counter()
    result = backtest(series, horizon=HORIZON, origins=origins, config=ForecastConfig())
    scores = {s.model: s.to_dict() for s in result.scores}
    arima = scores["arima"]
    baseline = min(scores["naive"]["mase"], scores["seasonal_naive_24"]["mase"])
    ratio = arima["mase"] / baseline
    lo, hi = COVERAGE80_TARGET
    return {
        "series": name,
        "file": file,
        "column": column,
        "slice": slice_,
        "hours": len(series),
        "origins": [result.origins[0], result.origins[-1]],
        "n_origins": len(result.origins),
        "models": [scores[m] for m in MODELS],
        "arima_specs": arima["detail"],
        "targets": {
            "mase_ratio": round(ratio, 3),
            "mase_pass": bool(ratio <= MASE_RATIO_TARGET),
            "coverage80": arima["coverage80"],
            "coverage80_pass": bool(lo <= arima["coverage80"] <= hi),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(runs: list[dict[str, Any]], seconds: float) -> str:
    """Targets table, then every model's metrics, for both slices."""
    lines = [
        "# Demand forecast benchmark",
        "",
        f"Rolling origin, {HORIZON} h ahead from each daily origin, every model re-fitted at "
        f"every origin on the trailing window (default `ForecastConfig`: 672 h). MASE is "
        f"scaled by the in-sample seasonal-naive(24) MAE of each origin's window. Targets: "
        f"ARIMA MASE <= {MASE_RATIO_TARGET:.2f} x min(naive, seasonal_naive_24); 80% "
        f"coverage in [{COVERAGE80_TARGET[0]:.0%}, {COVERAGE80_TARGET[1]:.0%}]. "
        f"Total run time {seconds:.0f} s.",
        "",
    ]
    for slice_ in SLICES:
        chosen = [r for r in runs if r["slice"] == slice_]
        if not chosen:
            continue
        lines += [f"## {slice_.capitalize()} slice", ""]
        lines += [
            "| series | origins (hours) | ARIMA MASE | best of naive / sn24 | ratio | MASE target "
            "| cov80 | cov80 target |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in chosen:
            models = {m["model"]: m for m in r["models"]}
            best = min(models["naive"]["mase"], models["seasonal_naive_24"]["mase"])
            t = r["targets"]
            lines.append(
                f"| {r['series']} | {r['n_origins']} ({r['origins'][0]}–"
                f"{r['origins'][-1] + HORIZON - 1}) | {models['arima']['mase']:.3f} | "
                f"{best:.3f} | {t['mase_ratio']:.3f} | {'pass' if t['mase_pass'] else 'miss'} "
                f"| {t['coverage80']:.1%} | {'pass' if t['coverage80_pass'] else 'miss'} |"
            )
        lines += [
            "",
            "| series | model | MASE | sMAPE % | cov80 | cov95 | fit s | fallbacks |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in chosen:
            for m in r["models"]:
                lines.append(
                    f"| {r['series']} | {m['model']} | {m['mase']:.3f} | {m['smape']:.1f} | "
                    f"{m['coverage80']:.0%} | {m['coverage95']:.0%} | {m['fit_seconds']:.1f} | "
                    f"{m['fallbacks']} |"
                )
        lines += ["", "SARIMAX specs chosen (count of origins):", ""]
        lines += [f"* {r['series']}: {r['arima_specs']}" for r in chosen]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--slice", choices=SLICES, action="append", dest="slices",
                        help="run only this slice (repeatable; default both)")  # fmt: skip
    parser.add_argument("--out", default="forecast", help="results name (default forecast)")
    args = parser.parse_args()
    slices = args.slices or list(SLICES)
    tasks = [(name, file, column, s) for s in slices for name, file, column in SERIES]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run_one, *zip(*tasks, strict=True)))
    seconds = time.perf_counter() - started
    config = ForecastConfig()
    data = {
        "protocol": {
            "horizon": HORIZON,
            "origins": ORIGINS,
            "window": config.window,
            "orders": [list(map(list, pair)) for pair in config.orders],
            "transform": config.transform,
            "daily_fourier": config.daily_fourier,
            "weekly_fourier": config.weekly_fourier,
            "weekly_acf": config.weekly_acf,
            "ols_fourier": config.ols_fourier,
            "selection": config.selection,
            "validation_days": config.validation_days,
            "calibration_days": config.calibration_days,
            "mase_ratio_target": MASE_RATIO_TARGET,
            "coverage80_target": list(COVERAGE80_TARGET),
            "jobs": args.jobs,
        },
        "runs": runs,
        "seconds": round(seconds, 1),
    }
    write(args.out, data, markdown(runs, seconds))


if __name__ == "__main__":
    main()
