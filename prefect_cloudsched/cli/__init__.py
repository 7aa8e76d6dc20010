"""``prefect-cloudsched`` console script.

Every command module registers itself on :data:`prefect_cloudsched.cli._app.app`. ``main``
turns our own input errors into one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

try:  # typer >= 0.25 vendors click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.errors import CloudSchedError

_COMMAND_MODULES = (
    "prices_cmd",
    "report_cmd",
    "forecast_cmd",
    "blocks_cmd",
    "plan_cmd",
    "reap_cmd",
    "simulate_cmd",
)

for _name in _COMMAND_MODULES:  # each registers its commands; heavy imports stay inside them
    importlib.import_module(f"prefect_cloudsched.cli.{_name}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 failure, 2 bad input)."""
    try:
        code = app(args=argv, standalone_mode=False)  # click returns Exit codes here
    except CloudSchedError as err:
        typer.echo(f"Error: {err}", err=True)
        return 2
    except click_exceptions.UsageError as err:
        typer.echo(f"Error: {err.format_message()}", err=True)
        if err.ctx is not None:
            typer.echo(f"Try '{err.ctx.command_path} --help' for help.", err=True)
        return 2
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    except typer.Exit as exit_:
        return int(exit_.exit_code or 0)
    return code if isinstance(code, int) else 0


def _entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
