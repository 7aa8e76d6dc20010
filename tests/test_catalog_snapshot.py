"""The shipped price snapshot is rebuilt byte for byte from the raw inputs in data/prices."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_snapshot_rebuilds_from_the_repository():
    spec = importlib.util.spec_from_file_location(
        "build_catalog", ROOT / "scripts/build_catalog.py"
    )
    build_catalog = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_catalog)
    rebuilt = build_catalog.build(ROOT / "data" / "prices")
    shipped = ROOT / "prefect_cloudsched" / "core" / "catalog" / "data" / "offers.csv"
    assert shipped.read_bytes() == rebuilt.encode("utf-8")
    assert (ROOT / "data/prices/SOURCE.md").read_bytes() == (
        shipped.parent / "SOURCE.md"
    ).read_bytes()
