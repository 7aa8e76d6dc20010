"""``prefect-cloudsched prices``: list the offers of the price catalog, or refresh it.

``prices [OPTIONS]`` lists (``prices list`` spelled out); ``prices refresh`` rebuilds the
catalog from the clouds' public price APIs into the cloudsched home.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import (
    CloudsOption,
    FormatOption,
    JsonOption,
    OutputFormat,
    catalog_from_option,
    cloud_errors,
    finite,
    group_with_default,
    render_rows,
    resolve_format,
    whole,
)
from prefect_cloudsched.errors import InputError

_DEFAULT_COMMAND = "list"


prices_app = typer.Typer(
    cls=group_with_default(_DEFAULT_COMMAND, empty_too=True),
    rich_markup_mode="markdown",
    help="""List catalog offers (the default), or refresh the catalog from the clouds.

Examples:

* `prefect-cloudsched prices --gpu A10G --option spot`
* `prefect-cloudsched prices refresh --cloud aws --dry-run`
""",
)
app.add_typer(prices_app, name="prices")


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
    output: FormatOption = None,
    as_json: JsonOption = False,
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
    from dataclasses import fields

    from prefect_cloudsched.core.catalog import Offer, PurchaseOption
    from prefect_cloudsched.core.needs import normalize_gpu_type

    output = resolve_format(output, as_json)
    finite(max_price, "--max-price", low=0)
    whole(min_gpus, "--min-gpus", low=0)
    whole(limit, "--limit", low=0)
    catalog = catalog_from_option(catalog_path)
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
    # csv/json carry every offer field in the dataclass's order, but the price source
    listed = [f.name for f in fields(Offer) if f.name != "source"]
    rows = [{f: _value(getattr(o, f)) for f in listed} for o in shown]
    if output is not OutputFormat.TABLE:
        render_rows(rows, listed, output, right=("usd_per_hour", "ondemand_usd_per_hour"))
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


@prices_app.command("refresh")
def refresh(
    cloud: CloudsOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write (default: the cloudsched home's catalog)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Fetch and report; write nothing.")
    ] = False,
) -> None:
    """Rebuild the catalog from the clouds' public price sources, with progress.

    AWS: the Price List API (on-demand, 1-year reserved) and the spot price history, through
    boto3 (needs AWS credentials; any account). GCP: the Cloud Billing Catalog through
    google-cloud-billing (`pip install 'prefect-cloudsched[prices]'`; needs Application
    Default Credentials). The shipped snapshot gives the instance types and places; rows a
    source does not price keep their snapshot price, and the summary says how many. The
    result, in `$PREFECT_CLOUDSCHED_HOME/catalog/offers.csv`, is used over the snapshot by
    every command; delete it to go back.

    Examples:

    * `prefect-cloudsched prices refresh`
    * `prefect-cloudsched prices refresh --cloud aws --dry-run`
    * `prefect-cloudsched prices refresh --cloud gcp --out my-offers.csv`
    """
    from prefect_cloudsched.cli._common import progress_bar, say, writable_path
    from prefect_cloudsched.core.catalog import refreshed_catalog_path, snapshot_rows
    from prefect_cloudsched.core.catalog.refresh import refresh_rows

    clouds = {c.value for c in cloud} if cloud else {"aws", "gcp"}
    target = out or refreshed_catalog_path()
    if not dry_run:
        writable_path(target, "--out")
    if "gcp" in clouds:
        from prefect_cloudsched.cli._common import require_extra

        require_extra("google.cloud.billing_v1", "prices refresh --cloud gcp")
    base = snapshot_rows()
    aws_rows = [r for r in base if r["cloud"] == "aws"]
    types = sorted({r["instance_type"] for r in aws_rows})
    regions = sorted({r["region"] for r in aws_rows})
    total = (len(types) + len(regions) if "aws" in clouds else 0) + ("gcp" in clouds)
    fetched: dict[str, object] = {}
    with progress_bar("refreshing prices", total) as step:
        if "aws" in clouds:
            fetched.update(_fetch_aws(types, regions, step))
        if "gcp" in clouds:
            fetched["gcp"] = _fetch_gcp(step)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")
    rows, stats = refresh_rows(base, stamp=stamp, **fetched)  # type: ignore[arg-type]
    say(stats.summary())
    if not any(stats.priced.values()):
        raise InputError(
            "the price sources returned nothing usable; the catalog was not changed "
            "(check the credentials and the --cloud choice)"
        )
    if dry_run:
        say(f"dry run: {len(rows)} rows not written")
        return
    _write_catalog(rows, target, stamp, stats.summary(), sorted(clouds))
    typer.echo(f"wrote {len(rows)} rows to {target} (used over the shipped snapshot)")


def _fetch_aws(types: list[str], regions: list[str], step) -> dict[str, object]:
    from prefect_cloudsched.adapters.prices import fetch_aws_list_prices, fetch_aws_spot

    hint = "set AWS credentials (AWS_PROFILE or aws configure), or use --cloud gcp"
    with cloud_errors("fetch AWS prices", hint):
        listed = fetch_aws_list_prices(types, step=step)
        spot = fetch_aws_spot(regions, types, step=step)
    return {"aws": listed, "aws_spot": spot}


def _fetch_gcp(step) -> object:
    from prefect_cloudsched.adapters.prices import fetch_gcp_skus

    hint = "run `gcloud auth application-default login`, or use --cloud aws"
    with cloud_errors("fetch GCP prices", hint):
        return fetch_gcp_skus(step=step)


def _write_catalog(rows, target: Path, stamp: str, summary: str, clouds: list[str]) -> None:
    """Write atomically (a half-written catalog would be read by the next command)."""
    import csv
    import os

    from prefect_cloudsched.core.catalog.refresh import COLUMNS

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, target)
    target.with_name("SOURCE.md").write_text(
        f"# Refreshed price catalog\n\nBuilt {stamp} by `prefect-cloudsched prices refresh` "
        f"from {', '.join(clouds)}: AWS Price List + spot price history (boto3), GCP Cloud "
        f"Billing Catalog (google-cloud-billing). Instance types and places are the shipped "
        f"snapshot's; a row's `source` says `refresh {stamp}` when its prices are fresh.\n\n"
        f"{summary}\n",
        encoding="utf-8",
    )
