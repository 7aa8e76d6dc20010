"""Daily capacity planning: forecast GPU demand → plan reserved/on-demand/spot → ledger → artifact.

Demand comes from a CSV (``hour,gpu_hours``, like the trace files) or, without one, from the
ledger's own placements (GPU-hours per hour of one GPU model). The plan is stored as a
**draft**: ``prefect-cloudsched plan apply --plan-id N`` shows what it would buy and, with
``--yes``, buys it; only then does ``CloudSchedTaskRunner(use_plan=True)`` count on its
reserved capacity. The plan is also a table artifact (``cloudsched-capacity-plan``) on the
flow run.

Run it once: ``python flows/capacity_planning.py --series bench/data/alibaba_gpu2023_hourly.csv``.
Serve it daily at 06:00: ``python flows/capacity_planning.py --serve`` (see docs/planning.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

ARTIFACT_KEY = "cloudsched-capacity-plan"
#: The shortest history any forecast model takes (one day of hours).
MIN_HISTORY_HOURS = 24


@task
def load_demand(series: str | None, column: str, gpu_type: str, ledger_url: str | None) -> Any:
    """The hourly demand history: a CSV, or the ledger's GPU-hours of ``gpu_type``."""
    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.core.demand import hourly_demand
    from prefect_cloudsched.core.forecast import load_series_csv
    from prefect_cloudsched.errors import InputError

    if series is not None:
        return load_series_csv(series, column)
    records = Ledger(ledger_url).placements()
    if not records:
        raise InputError("the ledger has no placements yet; pass --series with a demand CSV")
    models = sorted({r.gpu_type for r in records if r.gpus and r.gpu_type})
    if gpu_type not in models:
        held = f"it has {', '.join(models)}" if models else "it has no GPU placements"
        raise InputError(
            f"the ledger has no {gpu_type} placements ({held}); pass --gpu-type with one of "
            "its models, or --series with a demand CSV"
        )
    history = hourly_demand(records, gpu_type=gpu_type)["gpu_hours"]
    if len(history) < MIN_HISTORY_HOURS:
        raise InputError(
            f"the ledger holds {len(history)} hour(s) of {gpu_type} demand; a forecast needs at "
            f"least {MIN_HISTORY_HOURS} (one day): plan later, or pass --series with a demand CSV"
        )
    return history


@task
def forecast_demand(history: Any, horizon: int, model: str) -> Any:
    """The combined forecast (SARIMAX + ETS + Theta + naive members), the pure SARIMAX, or
    the seasonal-naive baseline (fast)."""
    from prefect_cloudsched.core.forecast import fit_forecast

    return fit_forecast(history, horizon, model=model)


@task
def make_plan(
    forecast: Any,
    gpu_type: str,
    service_level: float,
    spot_max_share: float,
    budget_usd: float | None,
) -> Any:
    """The capacity plan for the forecast at the service level."""
    from prefect_cloudsched.core.catalog import load_catalog
    from prefect_cloudsched.core.planning import demand_from_forecast, plan_capacity

    demand = {f"gpu:{gpu_type}": demand_from_forecast(forecast, service_level)}
    return plan_capacity(
        demand,
        load_catalog(),
        service_level=service_level,
        spot_max_share=spot_max_share,
        budget_usd=budget_usd,
        progress=get_run_logger().info,
    )


@task
def store_plan(plan: Any, name: str, ledger_url: str | None) -> int | None:
    """Record a feasible plan in the ledger (an infeasible one would read as no capacity)."""
    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.core.records import to_micro

    if plan.status == "infeasible":
        get_run_logger().warning("plan infeasible, not stored: %s", "; ".join(plan.binding))
        return None
    return Ledger(ledger_url).record_plan(
        name=name,
        status=plan.status,
        expected_micro=to_micro(plan.expected_cost),
        ondemand_micro=to_micro(plan.ondemand_cost),
        plan=plan.to_dict(),
    )


def plan_table(plan: Any) -> list[dict[str, Any]]:
    """Rows of the artifact: one per reservation, then the cost summary (in cents rounded as
    ``prefect-cloudsched plan`` prints them: the saving is the difference of the two)."""
    from prefect_cloudsched.core.records import to_cents

    rows: list[dict[str, Any]] = [
        {
            "item": f"reserve {r.count} x {r.capacity_key}",
            "usd_per_hour": round(r.usd_per_hour * r.count, 4),
            "usd_over_horizon": to_cents(r.usd_per_hour * r.count * plan.hours) / 100,
        }
        for r in plan.reserved
    ]
    expected, ondemand, saving = plan.totals(to_cents)
    rows += [
        {"item": "expected cost", "usd_per_hour": None, "usd_over_horizon": expected / 100},
        {"item": "all on-demand", "usd_per_hour": None, "usd_over_horizon": ondemand / 100},
        {"item": "saving", "usd_per_hour": None, "usd_over_horizon": saving / 100},
    ]
    return rows


@flow(name="capacity-planning", log_prints=True)
def capacity_planning(
    series: str | None = None,
    column: str = "gpu_hours",
    gpu_type: str = "A100",
    horizon: int = 168,
    service_level: float = 0.9,
    spot_max_share: float = 0.5,
    budget_usd: float | None = None,
    forecast_model: str = "combined",
    ledger_url: str | None = None,
) -> dict[str, Any]:
    """Forecast demand, plan capacity, store the plan, publish it as a table artifact.

    Args:
        series: Demand CSV (``hour,<column>``); ``None`` reads the ledger's GPU-hours.
        column: Demand column of the CSV.
        gpu_type: GPU model the demand is for.
        horizon: Hours to plan.
        service_level: Forecast quantile to cover (0.9 = upper 80 % bound).
        spot_max_share: Most of each hour's demand on spot.
        budget_usd: Highest expected USD over the horizon.
        forecast_model: ``combined`` (default), ``arima`` or ``seasonal-naive``.
        ledger_url: Ledger URL (default: the local ledger).
    """
    history = load_demand(series, column, gpu_type, ledger_url)
    forecast = forecast_demand(history, horizon, forecast_model)
    plan = make_plan(forecast, gpu_type, service_level, spot_max_share, budget_usd)
    plan_id = store_plan(plan, f"capacity-planning:{series or 'ledger'}:{gpu_type}", ledger_url)
    create_table_artifact(
        plan_table(plan),
        key=ARTIFACT_KEY,
        description=(
            f"Draft capacity plan {plan_id} for {gpu_type} over {plan.hours} h "
            f"(service level {service_level:g}, forecast {forecast.model}): status {plan.status}"
            + ("; binding: " + "; ".join(plan.binding) if plan.binding else "")
        ),
    )
    print(
        f"plan {plan_id}: {plan.status}; expected ${plan.expected_cost:,.2f} vs all on-demand "
        f"${plan.ondemand_cost:,.2f}; reserve {plan.reserved_capacity()}"
    )
    if plan_id is not None:
        print(
            f"plan {plan_id} is a draft: no placement counts on it until "
            f"`prefect-cloudsched plan apply --plan-id {plan_id} --yes` buys it"
        )
    return {"plan_id": plan_id, **plan.to_dict()}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry: run once on embedded defaults, or serve daily with ``--serve``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", help="demand CSV (default: the ledger's GPU-hours)")
    parser.add_argument("--column", default="gpu_hours")
    parser.add_argument("--gpu-type", default="A100")
    parser.add_argument("--horizon", type=int, default=168)
    parser.add_argument("--service-level", type=float, default=0.9)
    parser.add_argument(
        "--forecast-model", choices=("combined", "arima", "seasonal-naive"), default="combined"
    )
    parser.add_argument("--spot-max-share", type=float, default=0.5)
    parser.add_argument("--budget", type=float, help="highest expected USD over the horizon")
    parser.add_argument("--ledger-url", help="ledger URL (default: the local ledger)")
    parser.add_argument("--serve", action="store_true", help="serve daily at 06:00 UTC")
    args = parser.parse_args(argv)
    if args.horizon < 1:
        parser.error("--horizon must be >= 1")
    if not 0 < args.service_level < 1:
        parser.error("--service-level must be in (0, 1)")
    if not 0 <= args.spot_max_share <= 1:
        parser.error("--spot-max-share must be in [0, 1]")
    if args.budget is not None and not args.budget > 0:
        parser.error("--budget must be > 0")
    if args.series is None and not args.serve:  # one line now, not a failed run's tracebacks
        from prefect_cloudsched.errors import CloudSchedError

        try:
            load_demand.fn(None, args.column, args.gpu_type, args.ledger_url)
        except CloudSchedError as err:
            parser.error(str(err))
    parameters = {
        "series": args.series,
        "column": args.column,
        "gpu_type": args.gpu_type,
        "horizon": args.horizon,
        "service_level": args.service_level,
        "forecast_model": args.forecast_model,
        "spot_max_share": args.spot_max_share,
        "budget_usd": args.budget,
        "ledger_url": args.ledger_url,
    }
    if args.serve:
        capacity_planning.serve(name="daily-capacity-plan", cron="0 6 * * *", parameters=parameters)
        return None
    return capacity_planning(**parameters)


if __name__ == "__main__":
    main()
