"""Rebuild the package's shipped price snapshot from the raw price data in the repository.

Usage: ``python scripts/build_catalog.py [PATH/TO/prices]`` (default ``data/prices``: the two
raw inputs the build reads, ``instances.csv`` and ``gcp_cud.csv``, with their provenance in
``data/prices/SOURCE.md``). ``--check`` rebuilds into memory and fails if the shipped
snapshot differs, so CI can prove the snapshot is reproducible from the repository alone.

Keeps the columns the catalog uses, drops rows that fail a sanity check (spot above
on-demand, non-positive prices) and copies the provenance next to the snapshot so the
package says where every number came from.

GCP rows whose SkyPilot-catalog on-demand price disagrees with GCP's list price by more than
5 % (SOURCE.md, caveat 1: mostly a2/a3, up to 2x too cheap) take on-demand, spot and 1-yr CUD
prices from the list-price source (``gcp_cud.csv``) instead: under-pricing an H100 by half
would steer real money to the wrong cloud. Their ``source`` says so.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
from pathlib import Path

from prefect_cloudsched.core.catalog.refresh import COLUMNS as SNAPSHOT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "prefect_cloudsched" / "core" / "catalog" / "data"
RAW_DIR = ROOT / "data" / "prices"
COLUMNS = SNAPSHOT_COLUMNS  # the same columns `prices refresh` writes


def _keep(row: dict[str, str]) -> bool:
    on_demand = float(row["ondemand_usd_per_hour"] or 0)
    spot = float(row["spot_usd_per_hour"] or 0)
    return on_demand > 0 and spot <= on_demand


CROSSCHECK_TOLERANCE = 0.05


def _use_list_price(row: dict[str, str], cud: dict[tuple[str, str], dict[str, str]]) -> None:
    listed = row.get("od_crosscheck_usd_per_hour")
    if row["cloud"] != "gcp" or not listed:
        return
    catalog_price, list_price = float(row["ondemand_usd_per_hour"]), float(listed)
    if abs(catalog_price - list_price) <= CROSSCHECK_TOLERANCE * list_price:
        return
    source = cud.get((row["region"], row["instance_type"]))
    if source is None:
        return
    row["ondemand_usd_per_hour"] = source["ondemand_usd_per_hour"]
    row["spot_usd_per_hour"] = source["spot_usd_per_hour"]
    row["reserved_1yr_usd_per_hour"] = source["cud_1yr_usd_per_hour"]
    row["source"] = "S2 (list price; catalog off by >5%)"


def build(prices_dir: Path) -> str:
    """The snapshot's CSV text built from ``prices_dir``."""
    with (prices_dir / "gcp_cud.csv").open(newline="", encoding="utf-8") as src:
        cud = {(r["region"], r["instance_type"]): r for r in csv.DictReader(src)}
    with (prices_dir / "instances.csv").open(newline="", encoding="utf-8") as src:
        rows = list(csv.DictReader(src))
    for row in rows:
        _use_list_price(row, cud)
    rows = [r for r in rows if _keep(r)]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(prices_dir: Path, check: bool = False) -> int:
    text = build(prices_dir)
    target = OUT_DIR / "offers.csv"
    if check:
        same = target.read_bytes() == text.encode("utf-8")
        print(f"{target}: {'reproduced' if same else 'DIFFERS from a rebuild'} from {prices_dir}")
        return 0 if same else 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8", newline="")
    shutil.copyfile(prices_dir / "SOURCE.md", OUT_DIR / "SOURCE.md")
    print(f"wrote {text.count(chr(10)) - 1} rows to {target}")
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--check"]
    sys.exit(main(Path(args[0]) if args else RAW_DIR, check="--check" in sys.argv[1:]))
