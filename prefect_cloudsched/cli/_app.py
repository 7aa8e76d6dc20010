"""The one Typer application every ``prefect-cloudsched`` subcommand registers on.

Subcommand modules import ``app`` from here and decorate their functions with
``@app.command()``; :mod:`prefect_cloudsched.cli` imports them. Heavy imports (prefect,
statsmodels, pulp, cloud SDKs) stay inside the command bodies so ``--help`` is fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="prefect-cloudsched",
    help="Cost-aware scheduling for Prefect flows: prices, cost reports, forecasts, plans, "
    "simulations and the instance reaper.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
