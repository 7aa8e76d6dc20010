"""``prefect-cloudsched prices``: list and filter the offers of the price catalog."""

from __future__ import annotations

import csv
import io
import json
from enum import StrEnum
from typing import Annotated

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.errors import InputError


class OutputFormat(StrEnum):
    """Output formats of listing commands."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"


_FIELDS = (
    "cloud",
    "region",
    "zone",
    "instance_type",
    "vcpus",
    "memory_gib",
    "gpu_type",
    "gpu_count",
    "option",
    "usd_per_hour",
    "ondemand_usd_per_hour",
    "interruption_band",
)


@app.command("prices")
def prices(
    gpu: Annotated[str | None, typer.Option(help="GPU model, e.g. A10G, A100, H100.")] = None,
    region: Annotated[str | None, typer.Option(help="Region or zone, e.g. us-east-1.")] = None,
    cloud: Annotated[str | None, typer.Option(help="aws or gcp.")] = None,
    option: Annotated[
        str | None, typer.Option(help="Purchase option: on-demand, spot or reserved.")
    ] = None,
    max_price: Annotated[
        float | None, typer.Option("--max-price", help="Highest USD per hour to list.")
    ] = None,
    min_gpus: Annotated[
        int | None, typer.Option("--min-gpus", help="At least this many GPUs.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows to show (0 = all).")] = 30,
    output: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, csv or json.")
    ] = OutputFormat.TABLE,
    catalog_path: Annotated[
        str | None, typer.Option("--catalog", help="A catalog CSV instead of the shipped one.")
    ] = None,
) -> None:
    """List catalog offers, cheapest first.

    Examples:

    * `prefect-cloudsched prices --gpu A10G --option spot`
    * `prefect-cloudsched prices --cloud gcp --region us-central1 --max-price 1.5 -f csv`
    * `prefect-cloudsched prices --gpu H100 --min-gpus 8 -f json`
    """
    from prefect_cloudsched.core.catalog import PurchaseOption, load_catalog
    from prefect_cloudsched.core.needs import normalize_gpu_type

    catalog = load_catalog(catalog_path)
    if cloud is not None and cloud.lower() not in catalog.clouds:
        raise InputError(f"--cloud {cloud!r} is unknown; use one of: {', '.join(catalog.clouds)}")
    if option is not None and option not in PurchaseOption._value2member_map_:
        raise InputError(f"--option {option!r} is unknown; use on-demand, spot or reserved")
    if max_price is not None and max_price < 0:
        raise InputError("--max-price must be >= 0")
    if limit < 0:
        raise InputError("--limit must be >= 0")
    if region is not None and not any(region in (o.region, o.zone) for o in catalog.offers):
        raise InputError(
            f"--region {region!r} is not in the catalog; regions: {', '.join(catalog.regions)}"
        )
    offers = catalog.filter(
        cloud=cloud.lower() if cloud else None,
        region=region,
        gpu_type=normalize_gpu_type(gpu) if gpu else None,
        option=PurchaseOption(option) if option else None,
        max_price=max_price,
        min_gpus=min_gpus,
    )
    shown = offers if limit == 0 else offers[:limit]
    rows = [{f: _value(getattr(o, f)) for f in _FIELDS} for o in shown]
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(rows, indent=2))
    elif output is OutputFormat.CSV:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        typer.echo(buffer.getvalue(), nl=False)
    else:
        _print_table(rows, total=len(offers))


def _value(value: object) -> object:
    return value.value if isinstance(value, StrEnum) else value


def _print_table(rows: list[dict[str, object]], total: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} of {total} offers, cheapest first")
    for name in (
        "cloud",
        "location",
        "instance",
        "vCPU",
        "GiB",
        "GPUs",
        "option",
        "$/h",
        "on-demand $/h",
        "interruptions",
    ):
        table.add_column(
            name, justify="right" if "$" in name or name in ("vCPU", "GiB") else "left"
        )
    for r in rows:
        gpus = f"{r['gpu_count']}x{r['gpu_type']}" if r["gpu_count"] else "-"
        table.add_row(
            str(r["cloud"]),
            str(r["zone"] or r["region"]),
            str(r["instance_type"]),
            str(r["vcpus"]),
            f"{r['memory_gib']:g}",
            gpus,
            str(r["option"]),
            f"{r['usd_per_hour']:.4f}",
            f"{r['ondemand_usd_per_hour']:.4f}",
            str(r["interruption_band"] or "-"),
        )
    Console().print(table)
