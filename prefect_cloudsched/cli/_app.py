"""The one Typer application every ``prefect-cloudsched`` subcommand registers on.

Subcommand modules import ``app`` from here and decorate their functions with
``@app.command()``; :mod:`prefect_cloudsched.cli` imports them. Heavy imports (prefect,
statsmodels, pulp, cloud SDKs) stay inside the command bodies so ``--help`` is fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_cloudsched.cli._common import STATE

app = typer.Typer(
    name="prefect-cloudsched",
    help="Cost-aware scheduling for Prefect flows: prices, cost reports, forecasts, plans, "
    "simulations and the instance reaper.\n\n"
    "Examples:\n\n"
    "* `prefect-cloudsched prices --gpu A10G --option spot`\n"
    "* `prefect-cloudsched report --group-by day --since 7d --plot spend.png`\n"
    "* `prefect-cloudsched --quiet simulate --jobs jobs.csv --format json`",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"prefect-cloudsched {version('prefect-cloudsched')}")
        except PackageNotFoundError:  # running from a source tree that is not installed
            typer.echo("prefect-cloudsched (not installed; running from source)")
        raise typer.Exit()


@app.callback()
def _global_options(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or status lines on stderr.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Options that apply to every command (`--quiet` may also follow the command)."""
    STATE.quiet = quiet
