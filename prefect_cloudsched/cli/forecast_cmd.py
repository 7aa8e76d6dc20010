"""``prefect-cloudsched forecast``: forecast or backtest an hourly demand series.

statsmodels, pandas and matplotlib are imported inside the command so ``--help`` stays fast.
Progress goes to stderr; stdout carries only the table or the ``--json`` document.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import (
    FormatOption,
    JsonOption,
    OutputFormat,
    check_series_span,
    progress_bar,
    render_rows,
    require_extra,
    resolve_format,
    text_file,
    warn,
    whole,
    writable_path,
)
from prefect_cloudsched.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from prefect_cloudsched.core.forecast import BacktestResult, Forecast


class Transform(StrEnum):
    """Scale the SARIMAX candidates are fitted on."""

    AUTO = "auto"
    NONE = "none"
    LOG1P = "log1p"


class Model(StrEnum):
    """Which forecaster: the combination (default) or the pure ARIMA."""

    COMBINED = "combined"
    ARIMA = "arima"


class Selection(StrEnum):
    """How the SARIMAX candidate is chosen."""

    VALIDATION = "validation"
    AIC = "aic"


@app.command("forecast")
def forecast(
    series: Annotated[
        str, typer.Argument(help="Hourly CSV with an `hour` or ISO 8601 `timestamp` column.")
    ],
    column: Annotated[str, typer.Option(help="Column to forecast.")] = "gpu_hours",
    model: Annotated[
        Model,
        typer.Option(help="combined (SARIMAX + ETS + Theta + naive members) or arima."),
    ] = Model.COMBINED,
    horizon: Annotated[int, typer.Option(help="Hours ahead to forecast.")] = 24,
    backtest: Annotated[
        bool, typer.Option("--backtest", help="Score every model on rolling 24 h origins.")
    ] = False,
    origins: Annotated[int, typer.Option(help="Rolling origins for --backtest.")] = 14,
    window: Annotated[
        int | None, typer.Option(help="Trailing hours each fit sees [default: 672].")
    ] = None,
    transform: Annotated[
        Transform, typer.Option(help="auto, none or log1p (for spiky counts).")
    ] = Transform.AUTO,
    weekly_fourier: Annotated[
        int, typer.Option("--weekly-fourier", help="Weekly Fourier pairs offered (0 = off).")
    ] = 2,
    selection: Annotated[
        Selection,
        typer.Option(
            help="validation (AIC within each differencing family, family by recent "
            "multi-step error) or aic (lowest AIC overall)."
        ),
    ] = Selection.VALIDATION,
    output: FormatOption = None,
    as_json: JsonOption = False,
    plot: Annotated[
        str | None, typer.Option(help="Write a PNG of history, forecast and intervals.")
    ] = None,
) -> None:
    """Forecast hourly demand: a combination of SARIMAX, ETS, Theta, naive and seasonal-naive
    members with conformal 80/95% intervals (or, with --model arima, the SARIMAX alone).

    The combined forecast needs three days plus the horizon (up to a week) of history and
    otherwise uses the ARIMA; both fall back to seasonal-naive(24), with a warning, when
    history is under two days or no SARIMAX candidate fits. See docs/forecast.md.

    Examples:

    * `prefect-cloudsched forecast bench/data/alibaba_gpu2023_hourly.csv --horizon 24`
    * `prefect-cloudsched forecast philly.csv --column active_node_hours --plot fc.png`
    * `prefect-cloudsched forecast usage.csv --backtest --origins 7 --json`
    * `prefect-cloudsched forecast demand.csv --model arima --horizon 48`
    """
    output = resolve_format(output, as_json)
    as_json = output is OutputFormat.JSON
    for flag, value in (("--horizon", horizon), ("--origins", origins)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1 (got {value})")
    whole(horizon, "--horizon", high=8784)
    whole(origins, "--origins", high=366)
    whole(window, "--window", low=1, high=24 * 366 * 5)
    whole(weekly_fourier, "--weekly-fourier", low=0, high=84)
    if plot is not None and not plot.lower().endswith(".png"):
        raise InputError(f"--plot {plot!r} must name a .png file")
    if plot is not None:
        require_extra("matplotlib", "forecast --plot")
        writable_path(plot, "--plot")
    series = str(text_file(series, "SERIES"))

    from prefect_cloudsched.core import forecast as fc

    options = {
        "transform": transform.value,
        "weekly_fourier": weekly_fourier,
        "selection": selection.value,
    }
    config = fc.ForecastConfig(**options, **({"window": window} if window else {}))
    data = check_series_span(fc.load_series_csv(series, column), Path(series).name)
    # one step per arima origin and per baseline model ("arima origin 3/14: <candidate>")
    total = origins + len(fc.MODELS) - 1 if backtest else None
    started: set[str] = {"arima"}
    with progress_bar("backtest" if backtest else "forecast", total) as step:

        def progress(message: str) -> None:
            unit = message.split(":")[0]
            step(f"fitting {message}", advance=unit not in started)
            started.add(unit)

        if backtest:
            result = fc.backtest(
                data, horizon=horizon, origins=origins, config=config, progress=progress
            )
        else:
            prediction = fc.fit_forecast(data, horizon, config, progress, model=model.value)
    if backtest:
        _show_backtest(result, output)
        if plot:
            _plot_backtest(fc.prepare_series(data), result, plot, model.value)
        return
    if prediction.fallback_reason:
        warn(f"fell back: {prediction.fallback_reason}")
    _show_forecast(prediction, output, series, column)
    if plot:
        _plot_forecast(fc.prepare_series(data), prediction, plot)


def _show_forecast(prediction: Forecast, output: OutputFormat, series: str, column: str) -> None:
    from prefect_cloudsched.core.forecast.series import json_label

    if output is OutputFormat.JSON:
        typer.echo(json.dumps({"series": series, "column": column, **prediction.to_dict()},
                              indent=2))  # fmt: skip
        return
    if output is not OutputFormat.TABLE:  # the same "hour" column and labels as --json
        frame = prediction.frame.round(6)
        rows = [{"hour": json_label(hour), **row} for hour, row in zip(
            frame.index, frame.to_dict("records"), strict=True)]  # fmt: skip
        render_rows(rows, ["hour", *frame.columns], output)
        return
    from rich.table import Table

    from prefect_cloudsched.cli._common import print_table, stdout_console

    out = stdout_console()
    out.print(_model_line(prediction))
    table = Table(title=f"{column}: next {len(prediction.frame)} hours")
    for name in ("hour", "point", "lo80", "hi80", "lo95", "hi95"):
        table.add_column(name, justify="right")
    for hour, row in prediction.frame.iterrows():
        table.add_row(str(json_label(hour)), *(f"{v:.3f}" for v in row.to_numpy()))
    print_table(table, out)


def _model_line(prediction: Forecast) -> str:
    if prediction.method == "combined":
        members = "; ".join(
            f"{name} = {label}" for name, label in (prediction.members or {}).items()
            if label != name
        )  # fmt: skip
        return (
            f"Model: {prediction.model} ({members}), recent {len(prediction.frame)} "
            f"h-ahead MAE {prediction.validation_mae:.3g}, conformal intervals, "
            f"fitted in {prediction.fit_seconds:.1f} s"
        )
    if prediction.method != "sarimax":
        return f"Model: {prediction.model} (fallback: {prediction.fallback_reason})"
    line = f"Model: {prediction.model}, AIC {prediction.aic:.1f}"
    if prediction.validation_mae is not None:
        line += f", recent {len(prediction.frame)} h-ahead MAE {prediction.validation_mae:.3g}"
    if prediction.interval_scale:
        c80, c95 = prediction.interval_scale
        line += f", intervals scaled x{c80:.2f} (80%) / x{c95:.2f} (95%) to recent errors"
    return f"{line}, fitted in {prediction.fit_seconds:.1f} s"


def _show_backtest(result: BacktestResult, output: OutputFormat) -> None:
    if output is OutputFormat.JSON:
        typer.echo(json.dumps([s.to_dict() for s in result.scores], indent=2))
        return
    if output is not OutputFormat.TABLE:
        rows = [s.to_dict() for s in result.scores]
        render_rows(rows, list(rows[0]) if rows else [], output)
        return
    from rich.table import Table

    from prefect_cloudsched.cli._common import print_table, stdout_console

    out = stdout_console()
    table = Table(
        title=f"Backtest, {result.horizon} h ahead from {len(result.origins)} daily origins "
        f"(window {result.window} h)",
        caption="cov80/cov95: share of actuals inside the 80%/95% intervals",
    )
    for name in ("model", "MASE", "sMAPE%", "cov80", "cov95", "fit s", "fallbacks"):
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for s in result.scores:
        table.add_row(s.model, f"{s.mase:.3f}", f"{s.smape:.1f}", f"{s.coverage80:.0%}",
                      f"{s.coverage95:.0%}", f"{s.fit_seconds:.1f}", str(s.fallbacks))  # fmt: skip
    print_table(table, out)
    if result.arima_models:
        out.print(f"arima used: {'; '.join(dict.fromkeys(result.arima_models))}")
    out.print(f"backtest took {result.seconds:.1f} s ({result.cpu_seconds:.1f} s CPU)")


def _plot_forecast(history: pd.Series, prediction: Forecast, path: str) -> None:
    """History (last week) with the forecast and its 80/95% bands."""
    shown = history.iloc[-168:]
    fig, ax = _figure()
    ax.plot(shown.index, shown.to_numpy(), color="black", lw=1, label="history")
    _draw_bands(ax, prediction.frame, f"forecast: {prediction.model}")
    _save(fig, ax, path)


def _plot_backtest(history: pd.Series, result: BacktestResult, path: str, model: str) -> None:
    """Actuals over the scored hours with the chosen model's backtest forecasts and bands."""
    frame = result.forecasts.get(model)
    if frame is None:
        raise InputError(f"--plot with --backtest needs the {model} model in the backtest")
    shown = history.loc[frame.index[0] - 168 : frame.index[-1]]
    fig, ax = _figure()
    ax.plot(shown.index, shown.to_numpy(), color="black", lw=1, label="actual")
    for i in range(0, len(frame), result.horizon):  # one unconnected segment per origin
        label = f"{model}, {result.horizon} h ahead" if i == 0 else None
        _draw_bands(ax, frame.iloc[i : i + result.horizon], label)
    _save(fig, ax, path)


def _figure():
    from matplotlib.figure import Figure  # Agg canvas, no GUI backend needed

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    return fig, fig.add_subplot()


def _draw_bands(ax, frame: pd.DataFrame, label: str | None) -> None:
    """Point forecast with 80/95% bands; ``label=None`` keeps it out of the legend."""
    x = frame.index
    ax.fill_between(x, frame["lo95"], frame["hi95"], color="tab:blue", alpha=0.15,
                    label="95%" if label else None)  # fmt: skip
    ax.fill_between(x, frame["lo80"], frame["hi80"], color="tab:blue", alpha=0.3,
                    label="80%" if label else None)  # fmt: skip
    ax.plot(x, frame["point"], color="tab:blue", lw=1.5, label=label)


def _save(fig, ax, path: str) -> None:
    ax.set_xlabel("hour")
    ax.set_ylabel("demand")
    ax.legend(loc="upper left", fontsize="small")
    try:
        fig.savefig(Path(path), dpi=110)
    except OSError as err:
        raise InputError(
            f"--plot cannot write {path!r} ({err.strerror}); pick a writable path"
        ) from None
