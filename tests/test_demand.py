"""Hourly demand series derived from ledger rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from prefect_cloudsched.core.demand import hourly_demand
from prefect_cloudsched.core.records import PlacementRecord

T0 = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)


def row(start: datetime, minutes: float, gpus: int, gpu_type: str | None, cpus: float):
    return PlacementRecord(
        flow_run_id="f", flow_name="f", task_run_id="t", task_name="t", cloud="aws",
        region="us-east-1", zone=None, instance_type="x", option="spot", offer_key="k",
        gpu_type=gpu_type, gpus=gpus, price_micro_per_hour=1, started_at=start,
        ended_at=start + timedelta(minutes=minutes), runtime_s=minutes * 60, cost_micro=1,
        baseline_micro=1, decision_json=json.dumps({"task_needs": {"cpus": cpus}}),
    )  # fmt: skip


def test_integral_splits_across_hours_and_filters_gpu_type() -> None:
    rows = [row(T0, 60, 2, "A100", 4), row(T0 + timedelta(hours=1), 30, 1, "T4", 2)]
    frame = hourly_demand(rows)
    assert list(frame.index.hour) == [9, 10, 11]
    # 2 GPUs for 30 min in 9:00-10:00, 30 min in 10:00-11:00 (+ 1 T4 for 30 min at 10:30)
    assert frame["gpu_hours"].tolist() == pytest.approx([1.0, 1.5, 0.0])
    assert frame["cpu_hours"].tolist() == pytest.approx([2.0, 3.0, 0.0])
    only_a100 = hourly_demand(rows, gpu_type="A100")
    assert only_a100["gpu_hours"].sum() == pytest.approx(2.0)


def test_empty_ledger_gives_empty_series() -> None:
    assert hourly_demand([]).empty
