"""Ledger rows for tests: a whole ``PlacementRecord`` from the few columns a test is about."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_cloudsched.core.records import PlacementRecord, to_micro

#: When a test row starts unless the test says otherwise.
RECORD_START = datetime(2026, 11, 1, 9, tzinfo=UTC)


def placement_record(
    task_name: str = "train",
    *,
    cost_usd: float = 0.3,
    baseline_usd: float = 1.0,
    started_at: datetime = RECORD_START,
    cloud: str = "aws",
    option: str = "spot",
    **columns: Any,
) -> PlacementRecord:
    """One minute of ``task_name`` on a g5.xlarge (1 A10G) in us-east-1, unless told.

    ``columns`` override any other column of the row.
    """
    row = PlacementRecord(
        flow_run_id="fr-1", flow_name="pipe", task_run_id=f"tr-{task_name}", task_name=task_name,
        cloud=cloud, region="us-east-1", zone=None, instance_type="g5.xlarge", option=option,
        offer_key=f"{cloud}/us-east-1/g5.xlarge/{option}", gpu_type="A10G", gpus=1,
        price_micro_per_hour=to_micro(0.3), started_at=started_at,
        ended_at=started_at + timedelta(seconds=60), runtime_s=60.0,
        cost_micro=to_micro(cost_usd), baseline_micro=to_micro(baseline_usd),
    )  # fmt: skip
    return replace(row, **columns)
