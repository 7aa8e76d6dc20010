"""``prefect-cloudsched report``: what tasks cost, and what plain on-demand would have cost."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import (
    FORMAT_HELP,
    JsonOption,
    open_ledger,
    print_table,
    require_extra,
    resolve_format,
    stdout_console,
    writable_path,
)
from prefect_cloudsched.cli._common import OutputFormat as ReportFormat
from prefect_cloudsched.errors import InputError


class GroupBy(StrEnum):
    """Report grouping."""

    FLOW = "flow"
    TASK = "task"
    CLOUD = "cloud"
    REGION = "region"
    OPTION = "option"
    INSTANCE = "instance"
    DAY = "day"


def parse_when(text: str, option: str) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00``, or a relative ``24h`` / ``7d`` (ago)."""
    from prefect_cloudsched.core.needs import parse_duration
    from prefect_cloudsched.core.records import as_utc
    from prefect_cloudsched.errors import NeedsError

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        try:
            return datetime.now(UTC) - parse_duration(text, option)
        except NeedsError as err:
            if "too long" in str(err):
                raise InputError(str(err)) from None
            raise InputError(
                f"{option} {text!r} is neither a date (2026-11-01, 2026-11-01T12:00) "
                "nor a duration ago (24h, 7d)"
            ) from None
    return as_utc(value)


@app.command("report")
def report(
    group_by: Annotated[
        GroupBy,
        typer.Option("--group-by", "-g", help="flow, task, cloud, region, option, instance, day."),
    ] = GroupBy.FLOW,
    since: Annotated[
        str | None, typer.Option(help="Start: a date (2026-11-01) or a duration ago (7d).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End (exclusive), same forms as --since.")
    ] = None,
    flow: Annotated[
        str | None,
        typer.Option("--flow", help="Only this flow: its name or its function's name."),
    ] = None,
    last_run: Annotated[
        bool, typer.Option("--last-run", help="Only the most recent flow run (after filters).")
    ] = False,
    output: Annotated[ReportFormat | None, typer.Option("--format", "-f", help=FORMAT_HELP)] = None,
    as_json: JsonOption = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="Write a PNG: daily spend vs on-demand, by purchase option and cloud."
        ),
    ] = None,
    ledger_url: Annotated[
        str | None,
        typer.Option("--ledger", help="Ledger database URL (default: the local SQLite ledger)."),
    ] = None,
) -> None:
    """Spend, on-demand baseline, savings and interruptions from the ledger.

    The `why dearer` column counts the rows that cost more than plain on-demand, by reason:
    interrupted, overran, fell back, shared idle, reservation, egress, orphan (see
    docs/concepts.md, "How money is counted"). Instance time no task paid for (boot, idle
    between tasks, the warm pool's tail) is its own task, `(instance boot and idle)`, so the
    spend adds up to what the clouds bill.

    Examples:

    * `prefect-cloudsched report`
    * `prefect-cloudsched report --group-by task --flow ml-pipeline --last-run`
    * `prefect-cloudsched report -g day --since 7d -f csv > spend.csv`
    * `prefect-cloudsched report -g region --json`
    * `prefect-cloudsched report --since 30d --plot spend.png`
    """
    from prefect_cloudsched.adapters.ledger import redact_url
    from prefect_cloudsched.core.report import (
        build_report,
        render_csv,
        render_json,
        render_markdown,
    )

    output = resolve_format(output, as_json)
    start = parse_when(since, "--since") if since else None
    end = parse_when(until, "--until") if until else None
    if start and end and end <= start:
        raise InputError("--until must be later than --since")
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise InputError(f"--plot {str(plot)!r} must name a .png file")
        require_extra("matplotlib", "report --plot")
        writable_path(plot, "--plot")
    ledger = open_ledger(ledger_url, create=False)  # a typo in --ledger creates nothing
    pending = ledger.pending_journal_rows()
    records = ledger.placements(since=start, until=end)
    if flow is not None:
        records = [r for r in records if _same_flow(r.flow_name, flow)]
    filtered = bool(start or end or flow)
    records = [*records, *_instance_overhead(ledger, records, filtered=filtered)]
    if last_run and records:
        latest = max(records, key=lambda r: r.started_at).flow_run_id
        records = [r for r in records if r.flow_run_id == latest]
    result = build_report(records, group_by.value)
    if plot is not None:
        from prefect_cloudsched.cli.report_plot import plot_daily_spend

        typer.echo(f"wrote {plot_daily_spend(records, plot)}", err=True)
    notice = (
        f"{pending} ledger row(s) are waiting in the journal {ledger.journal.path} (the "
        "database refused them for a while); the next flow run on this ledger inserts them"
        if pending
        else ""
    )
    if notice and output is not ReportFormat.TABLE:
        typer.echo(f"Note: {notice}", err=True)  # keep the machine-readable output clean
    if output is ReportFormat.JSON:
        typer.echo(render_json(result))
    elif output is ReportFormat.CSV:
        typer.echo(render_csv(result), nl=False)
    elif output is ReportFormat.MARKDOWN:
        typer.echo(render_markdown(result), nl=False)
    else:
        from prefect_cloudsched.core.report import money, render_rich

        console = stdout_console()
        print_table(render_rich(result), console)
        if not records:
            console.print(
                f"[dim]No placements in {redact_url(ledger.url)} for this filter yet: "
                "run a flow with CloudSchedTaskRunner first.[/dim]"
            )
        else:
            pct = result.total.savings_pct
            saved = "n/a" if pct is None else f"{pct:.1f}%"
            console.print(
                f"Spent [bold]{money(result.total.spend)}[/bold] vs {money(result.total.baseline)} "
                f"on plain on-demand: saved {saved}; {result.total.interruptions} interruption(s)."
            )
        if notice:
            console.print(f"[yellow]Note: {notice}[/yellow]")


def _instance_overhead(ledger: Any, records: list[Any], *, filtered: bool) -> list[Any]:
    """Instance time no task paid (boot, idle, warm-pool tail) of the instances in ``records``.

    An instance's lifetime is set against *all* its rows, not only those the filters kept:
    a warm instance whose tasks straddle ``--since`` would otherwise look mostly idle.
    """
    from prefect_cloudsched.core.instance_time import overhead_records

    used = {r.instance_id for r in records if r.instance_id}
    if not used:
        return []
    rows = ledger.placements() if filtered else records
    found = overhead_records(rows, ledger.instances())
    return [row for row in found if row.instance_id in used]


def _same_flow(stored: str, wanted: str) -> bool:
    """A flow's name, or its function's name (Prefect names ``my_flow`` as ``my-flow``)."""
    return stored == wanted or stored.replace("_", "-") == wanted.replace("_", "-")
