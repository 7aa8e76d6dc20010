"""Fresh prices from the clouds' public price sources, applied to the catalog's rows. Pure.

The adapters (``prefect_cloudsched.adapters.prices``) fetch; this module only parses:

* **AWS Price List** (``pricing.get_products``): one JSON document per product; on-demand is
  the ``OnDemand`` term's hourly USD, reserved the ``Reserved`` term with a 1-year, standard,
  No Upfront contract (the catalog's reserved basis).
* **AWS spot price history** (``ec2.describe_spot_price_history``): the latest price per
  availability zone; a region's price is the median over its zones (the catalog is at region
  granularity for AWS).
* **GCP Cloud Billing Catalog** (``CloudCatalogClient.list_skus``): per-vCPU, per-GiB and
  per-GPU hourly SKUs per region and usage type (on-demand, spot, 1-year commitment); a VM's
  price is vCPUs × core + GiB × RAM + GPUs × GPU.

Rows the sources do not price keep their snapshot prices; :class:`RefreshStats` counts both,
so a refresh never silently mixes dates without saying so.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The snapshot's columns, in order (scripts/build_catalog.py writes the same).
COLUMNS: tuple[str, ...] = (
    "cloud",
    "region",
    "zone",
    "instance_type",
    "vcpus",
    "memory_gib",
    "accelerator",
    "accelerator_count",
    "ondemand_usd_per_hour",
    "spot_usd_per_hour",
    "reserved_1yr_usd_per_hour",
    "interruption_band",
    "source",
)

PriceKey = tuple[str, str]  # (region, instance type)


# --------------------------------------------------------------------------- AWS


def _usd_per_hour(term: Mapping[str, Any]) -> float | None:
    for dimension in term.get("priceDimensions", {}).values():
        if dimension.get("unit") in ("Hrs", "Hours"):
            usd = float(dimension["pricePerUnit"].get("USD", "nan"))
            if usd > 0:
                return usd
    return None


def parse_aws_price_list(documents: Iterable[str | Mapping[str, Any]]) -> dict[PriceKey, dict]:
    """``{(region, type): {"ondemand": usd, "reserved_1yr": usd}}`` from Price List products.

    Only Linux, shared tenancy, no pre-installed software, capacity status ``Used``: the
    catalog's basis. Other products (Windows, dedicated, reservations' capacity) are skipped.
    """
    prices: dict[PriceKey, dict] = {}
    for raw in documents:
        doc = json.loads(raw) if isinstance(raw, str) else raw
        attrs = doc.get("product", {}).get("attributes", {})
        if (
            attrs.get("operatingSystem") != "Linux"
            or attrs.get("tenancy") != "Shared"
            or attrs.get("preInstalledSw", "NA") != "NA"
            or attrs.get("capacitystatus", "Used") != "Used"
        ):
            continue
        key = (attrs.get("regionCode", ""), attrs.get("instanceType", ""))
        if not all(key):
            continue
        found = prices.setdefault(key, {})
        for term in doc.get("terms", {}).get("OnDemand", {}).values():
            usd = _usd_per_hour(term)
            if usd is not None:
                found["ondemand"] = usd
        for term in doc.get("terms", {}).get("Reserved", {}).values():
            lease = term.get("termAttributes", {})
            if (
                lease.get("LeaseContractLength") == "1yr"
                and lease.get("PurchaseOption") == "No Upfront"
                and lease.get("OfferingClass") == "standard"
            ):
                usd = _usd_per_hour(term)
                if usd is not None:
                    found["reserved_1yr"] = usd
    return {k: v for k, v in prices.items() if v}


def parse_aws_spot_history(
    region: str, entries: Iterable[Mapping[str, Any]]
) -> dict[PriceKey, float]:
    """``{(region, type): median over zones of each zone's latest spot price}``."""
    latest: dict[tuple[str, str], tuple[Any, float]] = {}
    for entry in entries:
        if entry.get("ProductDescription", "Linux/UNIX") != "Linux/UNIX":
            continue
        zone_key = (entry["InstanceType"], entry["AvailabilityZone"])
        when, price = entry["Timestamp"], float(entry["SpotPrice"])
        if price > 0 and (zone_key not in latest or when > latest[zone_key][0]):
            latest[zone_key] = (when, price)
    by_type: dict[str, list[float]] = {}
    for (instance_type, _zone), (_when, price) in latest.items():
        by_type.setdefault(instance_type, []).append(price)
    return {(region, t): statistics.median(p) for t, p in by_type.items()}


# --------------------------------------------------------------------------- GCP

#: Machine family → the SKU description stem of its per-vCPU and per-GiB prices.
GCP_FAMILY_STEMS: dict[str, str] = {
    "n1": "N1 Predefined Instance",
    "n2": "N2 Instance",
    "e2": "E2 Instance",
    "c2": "Compute optimized",
    "a2": "A2 Instance",
    "a3": "A3 Instance",
    "g2": "G2 Instance",
}
#: GPU model (catalog naming) → the SKU description of one GPU-hour.
GCP_GPU_SKUS: dict[str, str] = {
    "T4": "Nvidia Tesla T4 GPU",
    "V100": "Nvidia Tesla V100 GPU",
    "P100": "Nvidia Tesla P100 GPU",
    "P4": "Nvidia Tesla P4 GPU",
    "A100": "Nvidia Tesla A100 GPU",
    "A100-80GB": "Nvidia Tesla A100 80GB GPU",
    "L4": "Nvidia L4 GPU",
    "H100": "Nvidia H100 80GB GPU",
    "H100-MEGA": "Nvidia H100 80GB Mega GPU",
    "H200": "Nvidia H200 141GB GPU",
}
_USAGE = {"OnDemand": "ondemand", "Preemptible": "spot", "Commit1Yr": "reserved_1yr"}
_PREFIXES = re.compile(r"^(Spot Preemptible |Preemptible |Commitment v1: )")
_SUFFIX = re.compile(r" (running )?in .*$|( for 1 Year)$")


def _unit_price(sku: Mapping[str, Any]) -> float | None:
    infos = sku.get("pricingInfo") or sku.get("pricing_info") or []
    if not infos:
        return None
    expression = infos[0].get("pricingExpression") or infos[0].get("pricing_expression") or {}
    rates = expression.get("tieredRates") or expression.get("tiered_rates") or []
    if not rates:
        return None
    money = rates[-1].get("unitPrice") or rates[-1].get("unit_price") or {}
    usd = int(money.get("units") or 0) + int(money.get("nanos") or 0) / 1e9
    return usd if usd > 0 else None


def gcp_sku_stem(description: str) -> str:
    """``"Spot Preemptible N2 Instance Core running in Americas"`` → ``"N2 Instance Core"``."""
    return _SUFFIX.sub("", _PREFIXES.sub("", description)).strip()


def parse_gcp_skus(skus: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], float]:
    """``{(region, usage, stem): usd per unit-hour}``; usage is ondemand, spot or reserved_1yr."""
    prices: dict[tuple[str, str, str], float] = {}
    for sku in skus:
        category = sku.get("category", {})
        usage = _USAGE.get(category.get("usageType") or category.get("usage_type", ""))
        description = sku.get("description", "")
        if usage is None or "Sole Tenancy" in description or "Custom" in description:
            continue
        if usage == "reserved_1yr" and "1 Year" not in description:
            continue
        price = _unit_price(sku)
        if price is None:
            continue
        stem = gcp_sku_stem(description)
        for region in sku.get("serviceRegions") or sku.get("service_regions") or []:
            prices[(region, usage, stem)] = price
    return prices


def gcp_vm_price(
    row: Mapping[str, str], usage: str, skus: Mapping[tuple[str, str, str], float]
) -> float | None:
    """vCPUs × core + GiB × RAM + GPUs × GPU for one catalog row, or ``None`` if unpriced."""
    family = row["instance_type"].split("-")[0]
    stem = GCP_FAMILY_STEMS.get(family)
    if stem is None:
        return None
    region = row["region"]
    core = skus.get((region, usage, f"{stem} Core"))
    ram = skus.get((region, usage, f"{stem} Ram"))
    if core is None or ram is None:
        return None
    total = float(row["vcpus"]) * core + float(row["memory_gib"]) * ram
    count = int(float(row.get("accelerator_count") or 0))
    if count:
        gpu_stem = GCP_GPU_SKUS.get(row.get("accelerator", ""))
        gpu = skus.get((region, usage, gpu_stem)) if gpu_stem else None
        if gpu is None:
            return None
        total += count * gpu
    return round(total, 6)


# --------------------------------------------------------------------------- applying


@dataclass(slots=True)
class RefreshStats:
    """How many rows each source priced, and how many kept their snapshot price."""

    priced: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    dropped: int = 0

    def add(self, cloud: str, fresh: bool) -> None:
        target = self.priced if fresh else self.kept
        target[cloud] = target.get(cloud, 0) + 1

    def summary(self) -> str:
        parts = [
            f"{cloud}: {self.priced.get(cloud, 0)} rows refreshed, {self.kept.get(cloud, 0)} "
            "kept from the snapshot"
            for cloud in sorted(set(self.priced) | set(self.kept))
        ]
        if self.dropped:
            parts.append(f"{self.dropped} rows dropped (spot above on-demand or no price)")
        return "; ".join(parts)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def refresh_rows(
    rows: Iterable[Mapping[str, str]],
    *,
    aws: Mapping[PriceKey, dict] | None = None,
    aws_spot: Mapping[PriceKey, float] | None = None,
    gcp: Mapping[tuple[str, str, str], float] | None = None,
    stamp: str = "",
) -> tuple[list[dict[str, str]], RefreshStats]:
    """Catalog rows with every price the sources give replaced; the rest as they were."""
    stats = RefreshStats()
    out: list[dict[str, str]] = []
    for original in rows:
        row = {c: (original.get(c) or "") for c in COLUMNS}
        fresh = False
        if row["cloud"] == "aws" and aws is not None:
            key = (row["region"], row["instance_type"])
            listed = aws.get(key, {})
            if "ondemand" in listed:
                row["ondemand_usd_per_hour"] = _fmt(listed["ondemand"])
                fresh = True
            if "reserved_1yr" in listed:
                row["reserved_1yr_usd_per_hour"] = _fmt(listed["reserved_1yr"])
            if aws_spot and key in aws_spot:
                row["spot_usd_per_hour"] = _fmt(aws_spot[key])
                fresh = True
        elif row["cloud"] == "gcp" and gcp is not None:
            prices = {u: gcp_vm_price(row, u, gcp) for u in ("ondemand", "spot", "reserved_1yr")}
            if prices["ondemand"] is not None:
                row["ondemand_usd_per_hour"] = _fmt(prices["ondemand"])
                row["spot_usd_per_hour"] = _fmt(prices["spot"]) or row["spot_usd_per_hour"]
                row["reserved_1yr_usd_per_hour"] = (
                    _fmt(prices["reserved_1yr"]) or row["reserved_1yr_usd_per_hour"]
                )
                fresh = True
        if fresh:
            row["source"] = f"refresh {stamp}".strip()
        if not _sane(row):
            stats.dropped += 1
            continue
        stats.add(row["cloud"], fresh)
        out.append(row)
    return out, stats


def _sane(row: Mapping[str, str]) -> bool:
    try:
        on_demand = float(row["ondemand_usd_per_hour"])
        spot = float(row["spot_usd_per_hour"] or 0)
    except ValueError:
        return False
    return on_demand > 0 and spot <= on_demand
