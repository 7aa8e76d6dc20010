"""Rebuild the package's shipped price snapshot from the shared price data.

Usage: ``python scripts/build_catalog.py [PATH/TO/prices]`` (default ``../shared/data/prices``).

Keeps the columns the catalog uses, drops rows that fail a sanity check (spot above
on-demand, non-positive prices) and copies the provenance next to the snapshot so the
package says where every number came from.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "prefect_cloudsched" / "catalog" / "data"
COLUMNS = (
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


def _keep(row: dict[str, str]) -> bool:
    on_demand = float(row["ondemand_usd_per_hour"] or 0)
    spot = float(row["spot_usd_per_hour"] or 0)
    return on_demand > 0 and spot <= on_demand


def main(prices_dir: Path) -> None:
    with (prices_dir / "instances.csv").open(newline="") as src:
        rows = [r for r in csv.DictReader(src) if _keep(r)]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with (OUT_DIR / "offers.csv").open("w", newline="") as dst:
        writer = csv.DictWriter(dst, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shutil.copyfile(prices_dir / "SOURCE.md", OUT_DIR / "SOURCE.md")
    print(f"wrote {len(rows)} rows to {OUT_DIR / 'offers.csv'}")


if __name__ == "__main__":
    default = ROOT.parent / "shared" / "data" / "prices"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
