"""``prefect-cloudsched prices``: list the offers of the price catalog, or refresh it.

``prices [OPTIONS]`` lists (``prices list`` spelled out); ``prices refresh`` rebuilds the
catalog from the clouds' public price APIs into the cloudsched home.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import (
    FORMAT_HELP,
    JSON_HELP,
    OutputFormat,
    finite,
    render_rows,
    resolve_format,
    text_file,
    whole,
)
from prefect_cloudsched.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import click

_DEFAULT_COMMAND = "list"


class _PricesGroup(TyperGroup):
    """Routes ``prices --gpu A10G ...`` (no subcommand) to ``prices list``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] != "--help"):
            args = [_DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


prices_app = typer.Typer(
    cls=_PricesGroup,
    rich_markup_mode="markdown",
    help="""List catalog offers (the default), or refresh the catalog from the clouds.

Examples:

* `prefect-cloudsched prices --gpu A10G --option spot`
* `prefect-cloudsched prices refresh --cloud aws --region us-east-1`
""",
)
app.add_typer(prices_app, name="prices")

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


@prices_app.command(_DEFAULT_COMMAND)
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
    output: Annotated[OutputFormat | None, typer.Option("--format", "-f", help=FORMAT_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    catalog_path: Annotated[
        Path | None, typer.Option("--catalog", help="A catalog CSV instead of the current one.")
    ] = None,
) -> None:
    """List catalog offers, cheapest first (the refreshed catalog if any, else the snapshot).

    Examples:

    * `prefect-cloudsched prices --gpu A10G --option spot`
    * `prefect-cloudsched prices --cloud gcp --region us-central1 --max-price 1.5 -f csv`
    * `prefect-cloudsched prices --gpu H100 --min-gpus 8 --json`
    """
    from prefect_cloudsched.core.catalog import PurchaseOption, load_catalog
    from prefect_cloudsched.core.needs import normalize_gpu_type

    output = resolve_format(output, as_json)
    finite(max_price, "--max-price", low=0)
    whole(min_gpus, "--min-gpus", low=0)
    whole(limit, "--limit", low=0)
    catalog = load_catalog(text_file(catalog_path, "--catalog") if catalog_path else None)
    if cloud is not None and cloud.lower() not in catalog.clouds:
        raise InputError(f"--cloud {cloud!r} is unknown; use one of: {', '.join(catalog.clouds)}")
    if option is not None and option not in PurchaseOption._value2member_map_:
        raise InputError(f"--option {option!r} is unknown; use on-demand, spot or reserved")
    if region is not None and not any(region in (o.region, o.zone) for o in catalog.offers):
        raise InputError(
            f"--region {region!r} is not in the catalog; regions: {', '.join(catalog.regions)}"
        )
    offers = catalog.filter(
        cloud=cloud.lower() if cloud else None,
        region=region,
        gpu_type=_gpu(gpu, normalize_gpu_type) if gpu else None,
        option=PurchaseOption(option) if option else None,
        max_price=max_price,
        min_gpus=min_gpus,
    )
    shown = offers if limit == 0 else offers[:limit]
    rows = [{f: _value(getattr(o, f)) for f in _FIELDS} for o in shown]
    if output is not OutputFormat.TABLE:
        render_rows(rows, _FIELDS, output, right=("usd_per_hour", "ondemand_usd_per_hour"))
        return
    cells = [_table_row(r) for r in rows]
    render_rows(cells, _TABLE_FIELDS, output, headers=_TABLE_HEADERS,
                right=("vcpus", "memory_gib", "usd_per_hour", "ondemand_usd_per_hour"),
                title=f"{len(rows)} of {len(offers)} offers, cheapest first")  # fmt: skip


def _gpu(name: str, normalize) -> str:
    from prefect_cloudsched.errors import NeedsError

    try:
        return normalize(name)
    except NeedsError as err:
        raise InputError(f"--gpu: {err}") from None


def _value(value: object) -> object:
    return value.value if isinstance(value, StrEnum) else value


_TABLE_FIELDS = ("cloud", "location", "instance_type", "vcpus", "memory_gib", "gpus", "option",
                 "usd_per_hour", "ondemand_usd_per_hour", "interruption_band")  # fmt: skip
_TABLE_HEADERS = ("cloud", "location", "instance", "vCPU", "GiB", "GPUs", "option", "$/h",
                  "on-demand $/h", "interruptions")  # fmt: skip


def _table_row(r: dict[str, object]) -> dict[str, object]:
    return {
        "cloud": r["cloud"],
        "location": r["zone"] or r["region"],
        "instance_type": r["instance_type"],
        "vcpus": r["vcpus"],
        "memory_gib": f"{r['memory_gib']:g}",
        "gpus": f"{r['gpu_count']}x{r['gpu_type']}" if r["gpu_count"] else "-",
        "option": r["option"],
        "usd_per_hour": f"{r['usd_per_hour']:.4f}",
        "ondemand_usd_per_hour": f"{r['ondemand_usd_per_hour']:.4f}",
        "interruption_band": r["interruption_band"] or "-",
    }
