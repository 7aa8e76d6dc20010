"""``prefect-cloudsched`` console script.

Every command module registers itself on :data:`prefect_cloudsched.cli._app.app`. ``main``
turns every input error into one ``Error:`` line on stderr and exit code 2, never a
traceback: our own errors, click's usage errors, and numbers click would accept but no
command can use (NaN, infinities, integers past 64 bits) are refused for every option at
once. An unexpected exception is a bug: one line, exit 1, and the traceback only with
``PREFECT_CLOUDSCHED_TRACEBACK=1``.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from typing import Any

import typer

try:  # typer >= 0.25 vendors click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import STATE, hide_password
from prefect_cloudsched.errors import CloudSchedError, InputError

_COMMAND_MODULES = (
    "prices_cmd",
    "report_cmd",
    "forecast_cmd",
    "blocks_cmd",
    "plan_cmd",
    "plan_apply_cmd",
    "reap_cmd",
    "simulate_cmd",
)

for _name in _COMMAND_MODULES:  # each registers its commands; heavy imports stay inside them
    importlib.import_module(f"prefect_cloudsched.cli.{_name}")

_INT64 = 2**63 - 1
TRACEBACK_ENV = "PREFECT_CLOUDSCHED_TRACEBACK"


def _checked_numbers(callback: Any, flags: dict[str, str]) -> Any:
    """Wrap a command's callback: refuse NaN, infinities and integers past 64 bits.

    click accepts ``nan`` for a float and any size of integer; no option of ours has a use
    for them (a NaN price filter lists nothing, a 20-digit seed overflows numpy).
    """

    @functools.wraps(callback)
    def run(**kwargs: Any) -> Any:
        for name, value in kwargs.items():
            values = value if isinstance(value, list | tuple) else [value]
            for item in values:
                if isinstance(item, bool):
                    continue
                if isinstance(item, float) and not math.isfinite(item):
                    raise InputError(f"{flags.get(name, name)} must be a finite number, got {item}")
                if isinstance(item, int) and not -_INT64 <= item <= _INT64:
                    raise InputError(f"{flags.get(name, name)} is out of range: at most 19 digits")
        return callback(**kwargs)

    return run


def _harden(command: Any) -> None:
    """Check the numbers of every command of the tree (public click attributes only)."""
    if getattr(command, "callback", None) is not None and not getattr(
        command.callback, "_cloudsched_checked", False
    ):
        flags = {p.name: (p.opts[0] if p.opts else p.name) for p in command.params}
        command.callback = _checked_numbers(command.callback, flags)
        command.callback._cloudsched_checked = True
    for sub in getattr(command, "commands", {}).values():
        _harden(sub)


def _one_line(err: BaseException) -> str:
    """The first line of an error, with any URL password hidden."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return hide_password(text)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 failure, 2 bad input)."""
    command = typer.main.get_command(app)
    _harden(command)
    STATE.quiet = False
    args = list(sys.argv[1:] if argv is None else argv)
    if "--quiet" in args[1:] and "--" not in args:  # also accepted after the command name
        args.remove("--quiet")
        args.insert(0, "--quiet")
    try:
        code = command.main(args=args, prog_name="prefect-cloudsched", standalone_mode=False)
    except CloudSchedError as err:
        typer.echo(f"Error: {_one_line(err)}", err=True)
        return 2
    except click_exceptions.UsageError as err:
        typer.echo(f"Error: {err.format_message()}", err=True)
        if err.ctx is not None:
            typer.echo(f"Try '{err.ctx.command_path} --help' for help.", err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("Aborted.", err=True)
        return 130
    except typer.Exit as exit_:
        return int(exit_.exit_code or 0)
    except Exception as err:  # a bug: say it in one line, keep the traceback opt-in
        if os.environ.get(TRACEBACK_ENV):
            raise
        typer.echo(
            f"Error: unexpected {type(err).__name__}: {_one_line(err)} (a bug: please report "
            f"it; {TRACEBACK_ENV}=1 shows the traceback)",
            err=True,
        )
        return 1
    return code if isinstance(code, int) else 0


def _entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
