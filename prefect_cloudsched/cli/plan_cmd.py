"""``prefect-cloudsched plan``: forecast a demand series, plan capacity, buy the reservations.

``plan SERIES.csv ...`` is the planner (``plan run`` spelled out); ``plan apply`` shows, and
with ``--yes`` buys, the reservations of a stored plan. A click group that sends an unknown
first word to ``run`` gives both spellings one ``--help`` each.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import (
    CatalogOption,
    FormatOption,
    JsonOption,
    LedgerUrlOption,
    OutputFormat,
    catalog_from_option,
    check_series_span,
    finite,
    group_with_default,
    open_ledger,
    print_table,
    progress_bar,
    render_rows,
    require_extra,
    resolve_format,
    say,
    stdout_console,
    text_file,
    warn,
    whole,
    writable_path,
)
from prefect_cloudsched.core.records import to_cents
from prefect_cloudsched.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched.core.catalog import Catalog
    from prefect_cloudsched.core.planning import CapacityPlan

_DEFAULT_COMMAND = "run"


plan_app = typer.Typer(
    cls=group_with_default(_DEFAULT_COMMAND, empty_too=False),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="""Plan reserved / on-demand / spot capacity from a demand forecast, and buy it.

Usage: `prefect-cloudsched plan SERIES.csv [OPTIONS]` (same as `plan run`) or
`prefect-cloudsched plan apply [OPTIONS]`.

Examples:

* `prefect-cloudsched plan gpu_hours.csv --gpu-type A100 --horizon 168`
* `prefect-cloudsched plan gpu_hours.csv --gpu-type A100 --json --save`
* `prefect-cloudsched plan apply` (dry run: shows what the latest plan would buy)
* `prefect-cloudsched plan apply --plan-id 3 --yes`
""",
)
app.add_typer(plan_app, name="plan")


_say = say
#: Longest horizon planned: a year of hours (more is a typo, and an hours x offers LP that
#: would not fit in memory).
MAX_HORIZON_HOURS = 8784


@plan_app.command(_DEFAULT_COMMAND)
def run(
    series: Annotated[Path, typer.Argument(help="CSV with an `hour` column and a demand column.")],
    column: Annotated[str, typer.Option(help="Demand column (GPUs busy per hour).")] = "gpu_hours",
    gpu_type: Annotated[
        str | None, typer.Option("--gpu-type", help="GPU model the demand is for, e.g. A100.")
    ] = None,
    horizon: Annotated[int, typer.Option(help="Hours to plan (and forecast).")] = 168,
    service_level: Annotated[
        float,
        typer.Option(
            "--service-level", help="Forecast quantile to cover: 0.5, 0.9 (80% upper), 0.975."
        ),
    ] = 0.9,
    spot_max_share: Annotated[
        float, typer.Option("--spot-max-share", help="Most of each hour's demand on spot.")
    ] = 0.5,
    budget: Annotated[
        float | None, typer.Option(help="Highest expected USD over the horizon.")
    ] = None,
    cloud: Annotated[
        list[str] | None, typer.Option("--cloud", help="Only this cloud (repeatable).")
    ] = None,
    region: Annotated[
        list[str] | None, typer.Option("--region", help="Only this region (repeatable).")
    ] = None,
    solver: Annotated[str, typer.Option(help="cbc (bundled) or highs.")] = "cbc",
    time_limit: Annotated[
        float, typer.Option("--time-limit", help="Solver time limit, seconds.")
    ] = 60.0,
    gap: Annotated[float, typer.Option(help="Relative optimality gap.")] = 0.01,
    forecast_model: Annotated[
        str,
        typer.Option(
            "--forecast-model",
            help="combined (SARIMAX + ETS + Theta + naive members, conformal intervals), "
            "arima (SARIMAX alone) or seasonal-naive (last day repeated; fast).",
        ),
    ] = "combined",
    output: FormatOption = None,
    as_json: JsonOption = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of the hourly mix against the forecast.")
    ] = None,
    save: Annotated[bool, typer.Option(help="Store the plan in the ledger.")] = False,
    ledger_url: LedgerUrlOption = None,
    catalog_path: CatalogOption = None,
) -> None:
    """Forecast SERIES.csv and plan capacity for it (the default of `plan`).

    Prints the reservations to hold, the hourly on-demand/spot mix, the expected cost, the
    all-on-demand cost and the saving. Progress goes to stderr.

    Examples:

    * `prefect-cloudsched plan bench/data/alibaba_gpu2023_hourly.csv --gpu-type A100`
    * `prefect-cloudsched plan demand.csv --column gpu_hours --gpu-type H100 --horizon 720
      --service-level 0.975 --spot-max-share 0.3 --budget 250000 --json`
    * `prefect-cloudsched plan demand.csv --gpu-type A10G --cloud aws --plot mix.png --save`
    """
    from prefect_cloudsched.core.forecast import load_series_csv
    from prefect_cloudsched.core.planning import demand_from_forecast, plan_capacity

    output = resolve_format(output, as_json)
    whole(horizon, "--horizon", low=1, high=MAX_HORIZON_HOURS)
    finite(spot_max_share, "--spot-max-share", low=0, high=1)
    finite(budget, "--budget", low=0, low_open=True)
    finite(time_limit, "--time-limit", low=0, low_open=True)
    finite(gap, "--gap", low=0, high=1)
    series = text_file(series, "SERIES")
    if plot is not None:
        require_extra("matplotlib", "plan --plot")
        writable_path(plot, "--plot")
    if not 0 < service_level < 1:
        raise InputError(f"--service-level must be in (0, 1), e.g. 0.9; got {service_level}")
    if forecast_model not in _FORECAST_MODELS:
        raise InputError(
            f"--forecast-model {forecast_model!r}: use {' or '.join(_FORECAST_MODELS)}"
        )
    _solver(solver)
    catalog = catalog_from_option(catalog_path)
    gpu = _gpu_type(gpu_type, catalog)
    clouds = _clouds(cloud, catalog)
    regions = _regions(region, catalog)
    history = check_series_span(load_series_csv(series, column), series.name)
    _check_horizon_fits(history, horizon, forecast_model)
    # --save writes: creating the ledger is right; opened now, a bad URL costs no solve
    ledger = open_ledger(ledger_url) if save else None
    with progress_bar(f"planning {horizon} h of {series.name}:{column}", None) as step:
        step(f"forecasting ({forecast_model})")
        forecast = _forecast(history, horizon, forecast_model, step)
        step(f"forecast: {forecast.model}")
        demand = {f"gpu:{gpu}": demand_from_forecast(forecast, service_level)}
        plan = plan_capacity(
            demand,
            catalog,
            service_level=service_level,
            spot_max_share=spot_max_share,
            budget_usd=budget,
            clouds=clouds,
            regions=regions,
            solver=solver,
            time_limit_s=time_limit,
            gap=gap,
            progress=step,
        )
    plan_id = None
    if ledger is not None:
        plan_id = _save(plan, f"{series.name}:{column}:{gpu}", ledger)
    if plot is not None:
        _plot(plan, forecast.frame["point"].tolist(), f"gpu:{gpu}", plot)
        _say(f"wrote {plot}")
    if output is OutputFormat.JSON:
        import json

        from prefect_cloudsched.core.records import to_micro, to_usd

        expected, ondemand, saving = plan.totals(to_micro)
        payload: dict[str, Any] = {
            **plan.to_dict(),
            # one rounding to the micro-dollar, then saving = ondemand_cost - expected_cost
            "expected_cost": float(to_usd(expected)),
            "ondemand_cost": float(to_usd(ondemand)),
            "saving": float(to_usd(saving)),
            "series": str(series),
            "column": column,
            "gpu_type": gpu,
            "forecast": {"method": forecast.method, "model": forecast.model},
            "plan_id": plan_id,
        }
        typer.echo(json.dumps(payload, indent=2))
    elif output is OutputFormat.TABLE:
        _print_plan(plan, gpu, forecast.model, plan_id)
    else:
        _render_reservations(plan, output)
    if plan.status == "infeasible":
        raise typer.Exit(1)


_FORECAST_MODELS = ("combined", "arima", "seasonal-naive")


def _solver(name: str) -> str:
    """``--solver`` checked up front: an unknown name must not wait for the forecast."""
    from prefect_cloudsched.core.planning.solver import SOLVERS

    if name not in SOLVERS:
        raise InputError(f"--solver {name!r} is unknown; use {' or '.join(SOLVERS)}")
    return name


def _check_horizon_fits(history: Any, horizon: int, model: str) -> None:
    """Seasonal-naive repeats whole days of the history window: refuse, before any fitting,
    a ``--horizon`` that would reach further back than the history it is given."""
    from prefect_cloudsched.core.forecast import DAY, ForecastConfig, prepare_series

    if model != "seasonal-naive":
        return
    window = ForecastConfig().window
    hours = min(len(prepare_series(history)), window)
    longest = DAY * (hours // DAY)
    if horizon <= longest:
        return
    if longest == 0:
        raise InputError(
            f"--forecast-model seasonal-naive needs at least {DAY} hours of history; "
            f"SERIES has {hours}: give a longer series"
        )
    raise InputError(
        f"--horizon {horizon} is too long for --forecast-model seasonal-naive, which repeats "
        f"whole days of the last {hours} hours of history (it uses at most {window}): use "
        f"--horizon {longest} or less, or --forecast-model combined"
    )


def _usd(cents: int) -> str:
    """``$1,234.56`` / ``-$0.50`` from whole cents."""
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def _four_places(ten_thousandths: int) -> str:
    """``1,234.5678`` from whole ten-thousandths of a dollar (hourly rates as printed)."""
    return f"{ten_thousandths // 10_000:,}.{ten_thousandths % 10_000:04d}"


def _render_reservations(plan: CapacityPlan, output: OutputFormat) -> None:
    """The reservations as CSV or Markdown rows; the totals go to stderr."""
    rows = [
        {"capacity_key": i.capacity_key, "count": i.count, "gpu_count": i.gpu_count,
         "usd_per_hour": i.usd_per_hour, "usd_over_horizon": to_cents(
             i.usd_per_hour * i.count * plan.hours) / 100}
        for i in plan.reserved
    ]  # fmt: skip
    fields = ("capacity_key", "count", "gpu_count", "usd_per_hour", "usd_over_horizon")
    render_rows(rows, fields, output, right=fields[1:])
    expected, ondemand, saving = plan.totals(to_cents)
    if plan.status == "infeasible":  # shown with --quiet too: exit 1 must say why
        for line in plan.binding or ("no mix meets every hour's demand",):
            warn(f"the plan is infeasible: {line}")
        return
    _say(f"status {plan.status}; expected {_usd(expected)}, all on-demand "
         f"{_usd(ondemand)}, saving {_usd(saving)}")  # fmt: skip


def _forecast(history: Any, horizon: int, model: str, step: Any = None) -> Any:
    """The combined forecast (default), the pure SARIMAX, or seasonal-naive for speed."""
    from prefect_cloudsched.core.forecast import fit_forecast

    say_step = step or _say
    return fit_forecast(
        history, horizon, progress=lambda label: say_step(f"fitting {label}"), model=model
    )


def _gpu_type(name: str | None, catalog: Catalog) -> str:
    known = {g.lower(): g for g in catalog.gpu_types}
    if name is None:
        raise InputError(f"--gpu-type is required; one of: {', '.join(catalog.gpu_types)}")
    found = known.get(name.strip().lower())
    if found is None:
        raise InputError(
            f"--gpu-type {name!r} is unknown; the catalog has: {', '.join(catalog.gpu_types)}"
        )
    return found


def _clouds(values: list[str] | None, catalog: Catalog) -> list[str] | None:
    for value in values or []:
        if value.lower() not in catalog.clouds:
            raise InputError(f"--cloud {value!r} is unknown; use: {', '.join(catalog.clouds)}")
    return [v.lower() for v in values] if values else None


def _regions(values: list[str] | None, catalog: Catalog) -> list[str] | None:
    places = set(catalog.regions) | {o.zone for o in catalog.offers if o.zone}
    for value in values or []:
        if value not in places:
            raise InputError(
                f"--region {value!r} is not in the catalog; regions: {', '.join(catalog.regions)}"
            )
    return list(values) if values else None


def _save(plan: CapacityPlan, name: str, ledger: Any) -> int | None:
    if plan.status == "infeasible":
        _say("not saved: the plan is infeasible (the task runner would read it as no capacity)")
        return None
    from prefect_cloudsched.core.records import to_micro

    expected, ondemand, _ = plan.totals(to_micro)
    plan_id = ledger.record_plan(
        name=name,
        status=plan.status,
        expected_micro=expected,
        ondemand_micro=ondemand,
        plan=plan.to_dict(),
    )
    _say(
        f"saved as plan {plan_id}, a draft: no placement counts on it until "
        f"`prefect-cloudsched plan apply --plan-id {plan_id} --yes` buys it"
    )
    return plan_id


def _print_plan(plan: CapacityPlan, gpu: str, model: str, plan_id: int | None) -> None:
    from rich.table import Table

    console = stdout_console()
    console.print(
        f"Capacity plan for {gpu} GPUs over {plan.hours} h at service level "
        f"{plan.service_level:g} (forecast: {model})"
    )
    console.print(
        f"status: {plan.status}; {plan.candidates} candidate offers; "
        f"solved in {plan.solve_seconds:.2f} s with {plan.solver.upper()}"
    )
    if plan.status == "infeasible":
        for line in plan.binding:
            console.print(f"  binding: {line}", markup=False)
        return
    table = Table(title="Reservations to hold (1-yr, amortised)")
    for name in ("capacity key", "count", "GPUs each", "$/h each", f"$ over {plan.hours} h"):
        table.add_column(name, justify="left" if name == "capacity key" else "right")
    for item in plan.reserved:
        table.add_row(
            item.capacity_key,
            str(item.count),
            str(item.gpu_count),
            f"{item.usd_per_hour:.4f}",
            _usd(to_cents(item.usd_per_hour * item.count * plan.hours))[1:],
        )
    if plan.reserved:
        print_table(table, console)
    else:
        console.print("Reservations to hold: none (on-demand and spot are cheaper here)")
    supplied = plan.supplied.get(f"gpu:{gpu}", {})
    parts = []
    for option in ("reserved", "on-demand", "spot"):
        series = supplied.get(option, [])
        if series:
            parts.append(f"{option} {sum(series):,.0f} GPU-h (peak {max(series):g} GPUs)")
    console.print("Hourly mix: " + "; ".join(parts))
    expected, ondemand, saving = plan.totals(to_cents)
    share = saving / ondemand if ondemand else 0.0
    console.print(
        f"Expected cost {_usd(expected)}  all on-demand {_usd(ondemand)}"
        f"  saving {_usd(saving)} ({share:.1%})"
    )
    if plan_id is not None:
        console.print(
            f"Saved as plan {plan_id}: `prefect-cloudsched plan apply` shows its purchase"
        )


def _plot(plan: CapacityPlan, point: list[float], klass: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    supplied = plan.supplied.get(klass, {})
    hours = list(range(plan.hours))
    fig, ax = plt.subplots(figsize=(10, 4))
    layers = [(o, supplied.get(o, [0.0] * plan.hours)) for o in ("reserved", "on-demand", "spot")]
    ax.stackplot(
        hours, *[v for _, v in layers], labels=[o for o, _ in layers], alpha=0.7, step="post"
    )
    # hourly figures drawn as steps, like the supply: a sloped line would cross it mid-hour
    ax.step(hours, point, where="post", color="black", lw=1, label="forecast (point)")
    ax.step(
        hours,
        plan.demand.get(klass, []),
        where="post",
        color="black",
        lw=1,
        ls="--",
        label=f"demand at service level {plan.service_level:g}",
    )
    ax.set_xlabel("hour of the horizon")
    ax.set_ylabel(f"{klass.removeprefix('gpu:')} GPUs")
    ax.set_title(
        f"Planned mix: \\${plan.expected_cost:,.0f} vs \\${plan.ondemand_cost:,.0f} all on-demand"
    )
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise InputError(f"cannot write --plot {path}: {err.strerror}") from None
    finally:
        plt.close(fig)
