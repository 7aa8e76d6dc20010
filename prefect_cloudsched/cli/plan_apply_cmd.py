"""``prefect-cloudsched plan apply``: show, and with ``--yes`` buy, a stored plan's reservations.

Kept apart from the planner (``plan_cmd``): buying is its own step, with its own dry run.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from prefect_cloudsched.cli._common import (
    CatalogOption,
    FormatOption,
    JsonOption,
    LedgerUrlOption,
    OutputFormat,
    catalog_from_option,
    open_ledger,
    print_table,
    render_rows,
    resolve_format,
    stdout_console,
)
from prefect_cloudsched.cli.plan_cmd import _four_places, _say, _usd, plan_app
from prefect_cloudsched.core.records import to_cents
from prefect_cloudsched.errors import InputError


@plan_app.command("apply")
def apply(
    plan_id: Annotated[
        int | None, typer.Option("--plan-id", help="Stored plan to buy (default: the latest).")
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Really buy. Without it nothing is bought.")
    ] = False,
    gcp_project: Annotated[
        str | None,
        typer.Option("--gcp-project", help="GCP project for commitments ($GOOGLE_CLOUD_PROJECT)."),
    ] = None,
    aws_offering_type: Annotated[
        str,
        typer.Option(
            "--aws-offering-type", help="No Upfront (the catalog's rate), Partial/All Upfront."
        ),
    ] = "No Upfront",
    output: FormatOption = None,
    as_json: JsonOption = False,
    ledger_url: LedgerUrlOption = None,
    catalog_path: CatalogOption = None,
) -> None:
    """Show, and with --yes buy, the reservations of a stored plan. Dry run by default.

    AWS: Reserved Instances (standard, 1 year) through `describe_reserved_instances_offerings`
    and `purchase_reserved_instances_offering`; a quote more than 10% over the plan's rate is
    refused. GCP: a 12-month commitment with an attached reservation in the plan's zone.

    Examples:

    * `prefect-cloudsched plan apply`
    * `prefect-cloudsched plan apply --plan-id 3 --json`
    * `prefect-cloudsched plan apply --plan-id 3 --yes --gcp-project my-project`
    """
    from prefect_cloudsched.adapters.purchase import (
        AwsReservedInstances,
        GcpCommitments,
        buy,
        purchase_items,
    )

    if aws_offering_type not in ("No Upfront", "Partial Upfront", "All Upfront"):
        raise InputError(
            f"--aws-offering-type {aws_offering_type!r}: use No Upfront, Partial Upfront "
            "or All Upfront"
        )
    output = resolve_format(output, as_json)
    # apply reads a stored plan (and marks it bought): a mistyped --ledger must not create
    # an empty database, nor add ledger tables to some other SQLite file
    ledger = open_ledger(ledger_url, create=False)
    stored = _stored_plan(ledger, plan_id)
    if stored["status"] == "infeasible":
        raise InputError(f"plan {stored['id']} is infeasible; there is nothing to buy")
    if yes and stored.get("purchase_status") == "bought":
        raise InputError(
            f"plan {stored['id']} was already bought; buying it again would double the "
            "reservations (make a new plan with: prefect-cloudsched plan SERIES.csv --save)"
        )
    items = purchase_items(stored, catalog_from_option(catalog_path))
    if output is OutputFormat.JSON:
        import json

        typer.echo(
            json.dumps(
                {
                    "plan_id": stored["id"],
                    "dry_run": not yes,
                    "items": [i.to_dict() for i in items],
                },
                indent=2,
            )
        )
    elif output is OutputFormat.TABLE:
        _print_items(stored, items)
    else:
        render_rows([i.to_dict() for i in items], list(items[0].to_dict()) if items else [], output)
    if not items:
        return
    if not yes:
        _say("dry run: nothing was bought; re-run with --yes to buy these reservations")
        return
    clouds = {i.cloud for i in items}
    project = gcp_project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if "gcp" in clouds and not project:
        raise InputError(
            "the plan has GCP commitments; pass --gcp-project or set GOOGLE_CLOUD_PROJECT"
        )
    receipts = buy(
        items,
        confirm=True,
        aws=AwsReservedInstances(offering_type=aws_offering_type) if "aws" in clouds else None,
        gcp=GcpCommitments(project or "") if "gcp" in clouds else None,
    )
    for receipt in receipts:
        item = receipt.item
        _say(f"bought {item.count} x {item.capacity_key}: {receipt.reference} ({receipt.detail})")
    ledger.mark_plan_bought(stored["id"])  # from now on placements count on this capacity
    _say(f"plan {stored['id']} marked bought in the ledger")


def _stored_plan(ledger: Any, plan_id: int | None) -> dict[str, Any]:
    import json

    import sqlalchemy as sa

    from prefect_cloudsched.adapters.ledger import plans

    if plan_id is None:
        latest = ledger.latest_plan()
        if latest is None:
            raise InputError(
                "the ledger has no plan; make one with: prefect-cloudsched plan SERIES.csv --save"
            )
        return latest
    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(plans).where(plans.c.id == plan_id)).mappings().first()
    if row is None:
        raise InputError(f"--plan-id {plan_id}: no such plan in the ledger")
    return {
        **json.loads(row["plan_json"]),
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "purchase_status": row["purchase_status"],
    }


def _print_items(stored: dict[str, Any], items: list[Any]) -> None:
    from rich.table import Table

    from prefect_cloudsched.core.records import to_micro

    console = stdout_console()
    if not items:
        console.print(
            f"Plan {stored['id']} ({stored['name']}) holds no reservations; nothing to buy"
        )
        return
    table = Table(title=f"Plan {stored['id']} ({stored['name']}): reservations to buy")
    for name in ("cloud", "region", "zone", "type", "GPUs", "count", "$/h (all)", "1-yr total $"):
        table.add_column(
            name, justify="right" if "$" in name or name in ("count", "GPUs") else "left"
        )
    term_cents = [to_cents(i.term_usd) for i in items]
    hourly_ten_thousandths = [(to_micro(i.hourly_usd) + 50) // 100 for i in items]
    for i, cents, hourly in zip(items, term_cents, hourly_ten_thousandths, strict=True):
        table.add_row(
            i.cloud,
            i.region,
            i.zone or "-",
            i.instance_type,
            f"{i.gpu_count}x{i.gpu_type}" if i.gpu_count else "-",
            str(i.count),
            _four_places(hourly),
            _usd(cents)[1:],
        )
    print_table(table, console)
    total_hourly = sum(hourly_ten_thousandths)
    console.print(  # the totals are the sums of the printed rows
        f"Commitment: {_usd(sum(term_cents))} over one year "
        f"(${_four_places(total_hourly)}/h, billed whether used or not)"
    )
