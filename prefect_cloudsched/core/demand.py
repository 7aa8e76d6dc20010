"""Hourly demand series from the ledger: what the forecaster and the planner learn from.

``gpu_hours[h]`` is the exact integral of GPUs held by placed tasks over hour ``h`` divided
by 3600 (the mean number of busy GPUs), the same definition as the shared trace files, so a
series from the ledger and a series from a trace CSV are interchangeable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from prefect_cloudsched.core.records import PlacementRecord

HOUR = timedelta(hours=1)


def _hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def hourly_demand(
    records: Iterable[PlacementRecord],
    *,
    gpu_type: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """GPU-hours and vCPU-hours per hour, from placement rows.

    Args:
        records: Ledger rows (interrupted attempts count: they held the capacity).
        gpu_type: Count only GPUs of this model (``None`` = every model).
        start: First hour (default: the hour of the earliest row).
        end: End of the last hour, exclusive (default: after the latest row).

    Returns:
        A frame indexed by hour start (UTC) with columns ``gpu_hours`` and ``cpu_hours``;
        hours with no work are present with zeros.
    """
    rows = [r for r in records if r.ended_at > r.started_at]
    if not rows:
        return pd.DataFrame({"gpu_hours": [], "cpu_hours": []}, index=pd.DatetimeIndex([]))
    first = _hour_floor(start or min(r.started_at for r in rows))
    last = end or (_hour_floor(max(r.ended_at for r in rows)) + HOUR)
    hours = int((last - first) / HOUR)
    gpu = np.zeros(hours)
    cpu = np.zeros(hours)
    for r in rows:
        vcpus = _vcpus(r)
        gpus = r.gpus if gpu_type is None or r.gpu_type == gpu_type else 0
        begin = max(r.started_at, first)
        finish = min(r.ended_at, last)
        while begin < finish:
            slot = int((begin - first) / HOUR)
            slot_end = first + (slot + 1) * HOUR
            seconds = (min(finish, slot_end) - begin).total_seconds()
            gpu[slot] += gpus * seconds / 3600
            cpu[slot] += vcpus * seconds / 3600
            begin = slot_end
    index = pd.date_range(first, periods=hours, freq="h")
    return pd.DataFrame({"gpu_hours": gpu, "cpu_hours": cpu}, index=index)


def _vcpus(record: PlacementRecord) -> float:
    """vCPUs the task asked for (not the instance's size): what demand means for planning."""
    needs = json.loads(record.decision_json or "{}").get("task_needs", {})
    return float(needs.get("cpus", 0.0))
