"""What every command shares: the output grammar, input checks, messages and progress bars.

One grammar: ``--format table|csv|json|markdown`` (``--json`` is an alias of
``--format json``), messages and progress on stderr (silenced by the global ``--quiet``),
and tables that never cut a value: cells fold on a terminal, and when stdout is not a
terminal the table is as wide as its widest row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prefect_cloudsched.errors import InputError, hide_url_secrets, read_errors

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


class OutputFormat(StrEnum):
    """The output formats every listing command accepts."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    MARKDOWN = "markdown"


FORMAT_HELP = "table, csv, json or markdown."
JSON_HELP = "Same as --format json."

# Options several commands take, spelled and explained once (typer reads these aliases).
FormatOption = Annotated[OutputFormat | None, typer.Option("--format", "-f", help=FORMAT_HELP)]
JsonOption = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
LedgerUrlOption = Annotated[
    str | None, typer.Option("--ledger", help="Ledger URL (default: the local ledger).")
]
CatalogOption = Annotated[
    str | None, typer.Option("--catalog", help="A catalog CSV instead of the shipped one.")
]


@dataclass(slots=True)
class _State:
    """Global flags set by the app callback (``--quiet``)."""

    quiet: bool = False


STATE = _State()


def resolve_format(
    output: OutputFormat | None, as_json: bool, default: OutputFormat = OutputFormat.TABLE
) -> OutputFormat:
    """``--json`` is ``--format json``; contradicting an explicit ``--format`` is an error."""
    if not as_json:
        return output or default
    if output not in (None, OutputFormat.JSON):
        raise InputError(f"--json contradicts --format {output.value}; pass only one of them")
    return OutputFormat.JSON


class Cloud(StrEnum):
    """The clouds a command can be pointed at."""

    AWS = "aws"
    GCP = "gcp"


CloudsOption = Annotated[
    list[Cloud] | None, typer.Option("--cloud", help="aws or gcp (repeat; default: both).")
]


def group_with_default(default: str, *, empty_too: bool) -> type:
    """A click group that sends arguments not naming a subcommand to ``default``.

    ``prices --gpu A10G`` is ``prices list --gpu A10G``; ``plan SERIES.csv`` is
    ``plan run SERIES.csv``. ``empty_too``: no arguments at all also run ``default``.
    """
    from typer.core import TyperGroup

    class DefaultGroup(TyperGroup):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            if (not args and empty_too) or (
                args and args[0] not in self.commands and args[0] != "--help"
            ):
                args = [default, *args]
            return super().parse_args(ctx, args)

    return DefaultGroup


_SDK_MODULES = ("botocore", "boto3", "google", "requests", "urllib3", "grpc")


@contextlib.contextmanager
def cloud_errors(what: str, hint: str) -> Iterator[None]:
    """A cloud SDK failure (no credentials, endpoint down, denied) as one line with the fix."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:
        if not type(err).__module__.startswith(_SDK_MODULES):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if _unreachable(err):  # credentials are not the problem: saying so misleads
            hint = (
                "the endpoint could not be reached: check the network or proxy (HTTPS_PROXY) "
                "and any endpoint override (AWS_ENDPOINT_URL)"
            )
        raise InputError(f"cannot {what} ({hide_password(first)[:200]}); {hint}") from None


#: SDK errors (botocore, google-api-core) that mean "no answer", whatever the credentials.
_UNREACHABLE = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyConnectionError",
    "ServiceUnavailable",
    "DeadlineExceeded",
    "RetryError",
    "TransportError",
)


def _unreachable(err: BaseException) -> bool:
    return any(kind.__name__ in _UNREACHABLE for kind in type(err).__mro__)


# --------------------------------------------------------------------------- messages


def say(line: str) -> None:
    """A progress or status line on stderr (nothing with ``--quiet``)."""
    if not STATE.quiet:
        typer.echo(line, err=True)


def warn(line: str) -> None:
    """A warning on stderr; shown even with ``--quiet``."""
    typer.echo(f"Warning: {line}", err=True)


def stdout_console() -> Console:
    """Console for results: on a terminal its width; piped, wide enough to cut nothing."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=10_000, no_color=True, highlight=False)
    return console


@contextlib.contextmanager
def progress_bar(description: str, total: float | None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; off when stderr is not a terminal or with ``--quiet``.

    Yields ``step(label=None, advance=1)``: moves the bar and shows what is being done.
    Without a terminal the labels go to stderr as plain lines (unless ``--quiet``).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    if STATE.quiet or not console.is_terminal:

        def plain(label: str | None = None, advance: float = 1) -> None:
            if label:
                say(label)

        yield plain
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if total is not None:
        columns.append(MofNCompleteColumn())
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def step(label: str | None = None, advance: float = 1) -> None:
            progress.update(
                task, advance=advance, description=f"{description}: {label}" if label else None
            )

        yield step


# --------------------------------------------------------------------------- input checks


def finite(value: float | None, flag: str, *, low: float | None = None,
           high: float | None = None, low_open: bool = False) -> float | None:  # fmt: skip
    """``value`` if finite and inside the bounds; else one :class:`InputError` with the fix."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise InputError(f"{flag} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise InputError(f"{flag} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise InputError(f"{flag} must be <= {high:g}, got {value:g}")
    return value


def whole(value: int | None, flag: str, *, low: int | None = None,
          high: int | None = None) -> int | None:  # fmt: skip
    """``value`` inside ``[low, high]``; else one :class:`InputError` with the fix."""
    if value is None:
        return None
    if low is not None and value < low:
        raise InputError(f"{flag} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise InputError(f"{flag} must be <= {high:,}, got {value:,}")
    return value


def text_file(path: str | Path, flag: str) -> Path:
    """An existing, readable UTF-8 file (checked now, so no decoder traceback later)."""
    file = Path(path)
    if not file.exists():
        raise InputError(f"{flag} {str(file)!r} does not exist; check the path")
    if not file.is_file():
        raise InputError(f"{flag} {str(file)!r} is not a file; pass a CSV file")
    with (
        read_errors(flag, repr(file.name), repr(str(file)), save_as="UTF-8 CSV"),
        file.open(encoding="utf-8") as handle,
    ):
        while handle.read(1 << 20):
            pass
    return file


#: Longest hourly series accepted (ten years): gaps are filled hour by hour, so an hour column
#: with 0 and 10^15 would otherwise ask for petabytes.
MAX_SERIES_HOURS = 24 * 366 * 10


def catalog_from_option(path: str | Path | None) -> Any:
    """The catalog ``--catalog`` names (checked as a readable file), else the default one.

    ``plan run``, ``plan buy`` and ``prices`` take the same option and read it the same way.
    """
    from prefect_cloudsched.core.catalog import load_catalog

    return load_catalog(text_file(path, "--catalog") if path else None)


def check_series_span(series: Any, name: str) -> Any:
    """``series`` if its hours span at most :data:`MAX_SERIES_HOURS`; else one line."""
    import pandas as pd

    index = series.index
    if len(index) == 0:
        return series
    if isinstance(index, pd.DatetimeIndex):
        span = int((index.max() - index.min()) / pd.Timedelta(hours=1)) + 1
    else:
        span = int(index.max()) - int(index.min()) + 1
    if span > MAX_SERIES_HOURS:
        raise InputError(
            f"{name}: its hours span {span:,} hours (first {index.min()}, last {index.max()}); "
            f"at most {MAX_SERIES_HOURS:,} (ten years): check the hour column for a typo"
        )
    return series


def writable_path(path: str | Path, flag: str, *, directory: bool = False) -> Path:
    """A path we can create (or overwrite); checked before any long computation starts."""
    target = Path(path)
    folder = target if directory else target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".cloudsched-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise InputError(
            f"{flag} {str(path)!r} is not writable ({err.strerror}); pick another path"
        ) from None
    return target


def require_extra(module: str, purpose: str) -> None:
    """Import ``module`` or stop with the one line that says which extra to install."""
    from prefect_cloudsched._extras import require

    require(module, purpose)


def open_ledger(url: str | None, flag: str = "--ledger", *, create: bool = True) -> Any:
    """The ledger at ``url`` (or the default one); a bad URL is one line naming its source.

    The source is ``flag`` when the URL was given, else ``$PREFECT_CLOUDSCHED_LEDGER_URL``
    (the ledger names it). ``create=False`` for commands that only read, and for dry runs: a
    typo in the path must not make (and then report on) an empty database.
    """
    from prefect_cloudsched.adapters.ledger import URL_ENV, Ledger

    from_env = url is None and bool(os.environ.get(URL_ENV))
    return Ledger(url, create=create, source=URL_ENV if from_env else flag)


def hide_password(text: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host`` anywhere in ``text``.

    The secret runs to the *last* ``@`` of the authority (a password may hold ``@``), and
    password-like query parameters (``?password=...``) are hidden too.
    """
    return hide_url_secrets(text)


# --------------------------------------------------------------------------- rendering


def render_rows(rows: Sequence[dict[str, Any]], fields: Sequence[str], output: OutputFormat,
                *, title: str = "", headers: Sequence[str] | None = None,
                right: Sequence[str] = ()) -> None:  # fmt: skip
    """Print ``rows`` (dicts keyed by ``fields``) in the chosen format, nothing cut."""
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(list(rows), indent=2, default=str))
        return
    if output is OutputFormat.CSV:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows({f: _plain(r.get(f)) for f in fields} for r in rows)
        typer.echo(buffer.getvalue(), nl=False)
        return
    names = list(headers or fields)
    cells = [[_plain(r.get(f)) for f in fields] for r in rows]
    if output is OutputFormat.MARKDOWN:
        lines = [f"| {' | '.join(names)} |"]
        lines.append("|" + "|".join("---:" if f in right else "---" for f in fields) + "|")
        lines += [f"| {' | '.join(str(c) for c in row)} |" for row in cells]
        typer.echo("\n".join(lines))
        return
    from rich.table import Table

    table = Table(title=title or None)
    texts = [[str(c) for c in row] for row in cells]
    for field, name in zip(fields, names, strict=True):
        table.add_column(name, justify="right" if field in right else "left", overflow="fold")
    for row in texts:
        table.add_row(*row)
    print_table(table)


def print_table(table: Any, console: Console | None = None) -> None:
    """Print a rich table without cutting a value.

    Text wraps between words; a word (a number, a key, a region) never breaks: when the
    terminal is narrower than the table's narrowest rendering, the table is printed at that
    width and the terminal wraps the lines, instead of rich cutting values with an ellipsis.
    """
    from rich.measure import Measurement

    console = console or stdout_console()
    for column in table.columns:
        column.overflow = "fold"
    needed = Measurement.get(console, console.options.update(width=10_000), table).minimum
    needed = max(needed, _widest_word_width(table))
    if needed > console.width:
        from rich.console import Console

        console = Console(width=needed, file=console.file, no_color=console.no_color)
    console.print(table)


def _widest_word_width(table: Any) -> int:
    """Width the table needs so that no cell has to break inside a word."""
    edges = 3 * len(table.columns) + 1
    total = edges
    for column in table.columns:
        words = [w for cell in [str(column.header), *map(str, column.cells)] for w in cell.split()]
        total += max((len(w) for w in words), default=1)
    return total


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    return "" if value is None else value
