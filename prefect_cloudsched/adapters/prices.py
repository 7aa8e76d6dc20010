"""Fetch current prices from the clouds' public price APIs (the I/O half of ``prices refresh``).

* AWS: the Price List API (``pricing.get_products``, served from us-east-1) for on-demand and
  1-year reserved rates, and ``ec2.describe_spot_price_history`` per region for spot. Both
  need AWS credentials (any account; the data is public).
* GCP: the Cloud Billing Catalog (``google.cloud.billing_v1.CloudCatalogClient.list_skus`` on
  the Compute Engine service), through the ``[prices]`` extra; needs Application Default
  Credentials.

Parsing lives in :mod:`prefect_cloudsched.core.catalog.refresh`. Clients are parameters so the
tests replay recorded responses (botocore's ``Stubber``, recorded SKU JSON) offline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect_cloudsched.core.catalog.refresh import (
    PriceKey,
    parse_aws_price_list,
    parse_aws_spot_history,
    parse_gcp_skus,
)

#: Compute Engine's service id in the Cloud Billing Catalog.
GCP_COMPUTE_SERVICE = "services/6F81-5844-456A"
_LINUX_FILTERS = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
}

Step = Callable[[str], None]


def _quiet(_label: str) -> None:
    return None


def fetch_aws_list_prices(
    instance_types: Sequence[str], *, client: Any = None, step: Step = _quiet
) -> dict[PriceKey, dict]:
    """On-demand and 1-year reserved rates of these types in every region (one query each)."""
    if client is None:
        import boto3

        client = boto3.client("pricing", region_name="us-east-1")
    documents: list[str] = []
    for instance_type in instance_types:
        step(f"AWS Price List: {instance_type}")
        filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type}]
        filters += [
            {"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in _LINUX_FILTERS.items()
        ]
        for page in client.get_paginator("get_products").paginate(
            ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1"
        ):
            documents.extend(page.get("PriceList", []))
    return parse_aws_price_list(documents)


def fetch_aws_spot(
    regions: Sequence[str],
    instance_types: Sequence[str],
    *,
    client_for: Callable[[str], Any] | None = None,
    now: datetime | None = None,
    step: Step = _quiet,
) -> dict[PriceKey, float]:
    """The latest spot price per zone (median per region) of these types in these regions."""
    if client_for is None:
        import boto3

        def client_for(region: str) -> Any:
            return boto3.client("ec2", region_name=region)

    start = now or datetime.now(UTC)
    prices: dict[PriceKey, float] = {}
    for region in regions:
        step(f"AWS spot price history: {region}")
        entries: list[dict] = []
        paginator = client_for(region).get_paginator("describe_spot_price_history")
        for page in paginator.paginate(
            InstanceTypes=list(instance_types),
            ProductDescriptions=["Linux/UNIX"],
            StartTime=start,
        ):
            entries.extend(page.get("SpotPriceHistory", []))
        prices.update(parse_aws_spot_history(region, entries))
    return prices


def fetch_gcp_skus(*, client: Any = None, step: Step = _quiet) -> dict[tuple[str, str, str], float]:
    """Compute Engine SKUs of the Cloud Billing Catalog, parsed to per-unit hourly prices."""
    if client is None:
        from prefect_cloudsched._extras import require

        billing = require("google.cloud.billing_v1", "prices refresh --cloud gcp")
        client = billing.CloudCatalogClient()
    step("GCP Cloud Billing Catalog: Compute Engine SKUs")
    return parse_gcp_skus(_as_dicts(client.list_skus(parent=GCP_COMPUTE_SERVICE)))


def _as_dicts(skus: Iterable[Any]) -> Iterable[dict]:
    """proto-plus SKU messages (or already plain dicts) as JSON-like dicts."""
    for sku in skus:
        if isinstance(sku, dict):
            yield sku
        else:
            yield type(sku).to_dict(sku, preserving_proto_field_name=False)
