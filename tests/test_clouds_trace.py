"""MockClouds following an availability trace: refused launches and timed interruptions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_cloudsched.core.catalog import PurchaseOption, load_catalog
from prefect_cloudsched.errors import CapacityError
from prefect_cloudsched.simulate.spot import load_spot_trace
from prefect_cloudsched.testing.clouds import MockClouds, TraceClock

SCALE = 1.0  # wall seconds per trace hour


def _trace(tmp_path: Path) -> Path:
    # us-east-1a: down for hours 0-1, up for 2-4, down from 5; us-east-1b never up
    rows = ["timestamp_utc,us-east-1a,us-east-1b"]
    for hour, up in enumerate([0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]):
        rows.append(f"2023-02-15T{hour:02d}:00:00Z,{up},0")
    path = tmp_path / "aws_p3.2xlarge_avail_2023-02-15.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_trace_clock_scales_time_and_finds_the_zone(tmp_path: Path) -> None:
    now = [100.0]
    clock = TraceClock(load_spot_trace(_trace(tmp_path)), 0.1, clock=lambda: now[0])
    assert clock.now() == 0.0 and clock.launch("us-east-1") is None
    now[0] += 0.25  # 2.5 trace hours
    assert clock.now() == pytest.approx(2.5 * 3600)
    assert clock.launch("us-east-1") == ("us-east-1a", 5 * 3600.0)
    assert clock.wall_delay(5 * 3600.0) == pytest.approx(0.25)


def test_uniform_ticks_put_tick_i_at_i_times_the_median_gap(tmp_path: Path) -> None:
    """The replay reads tick i at i × the median gap; a stand-in following the trace plays
    the same market only on that axis (the real p3 ticks drift ~40 s a day from it)."""
    rows = ["timestamp_utc,us-east-1a"]
    stamps = ["00:00:00", "01:00:00", "02:00:00", "03:10:00", "04:10:00", "05:10:00"]
    for stamp, up in zip(stamps, [0, 0, 0, 1, 1, 0], strict=True):
        rows.append(f"2023-02-15T{stamp}Z,{up}")
    path = tmp_path / "aws_p3.2xlarge_avail_2023-02-15.csv"
    path.write_text("\n".join(rows) + "\n")
    real = load_spot_trace(path).lanes["us-east-1a"]
    uniform = load_spot_trace(path, uniform_ticks=True).lanes["us-east-1a"]
    assert (real.starts, real.ends) == ([3 * 3600 + 600.0], [5 * 3600 + 600.0])
    assert (uniform.starts, uniform.ends) == ([3 * 3600.0], [5 * 3600.0])


@pytest.fixture
def clouds(tmp_path: Path) -> Iterator[MockClouds]:
    with MockClouds(
        owner_id="trace-tests",
        heartbeat_seconds=0,
        record_instances=False,
        spot_trace=_trace(tmp_path),
        seconds_per_trace_hour=SCALE,
    ) as mc:
        yield mc


def _wait_until(clouds: MockClouds, trace_hour: float) -> None:
    assert clouds.trace_clock is not None
    time.sleep(max(0.0, (trace_hour * 3600 - clouds.trace_clock.now()) / 3600 * SCALE))


def test_launches_follow_the_trace_and_zone_loss_interrupts(clouds: MockClouds) -> None:
    offer = next(
        o
        for o in load_catalog().offers
        if o.instance_type == "p3.2xlarge"
        and o.region == "us-east-1"
        and o.option is PurchaseOption.SPOT
    )
    aws = clouds.provisioners["aws"]
    with pytest.raises(CapacityError):
        aws.ensure(offer, run_id="r1", task_name="train")  # hour 0: every zone down
    assert clouds.trace_launches[0][1:] == ("us-east-1", None)
    _wait_until(clouds, 2.2)
    handle = aws.ensure(offer, run_id="r1", task_name="train")
    assert clouds.trace_launches[-1][1:] == ("us-east-1", "us-east-1a")
    assert handle.instance_id not in clouds.interrupted
    assert [i["instance_id"] for i in clouds.running_instances("trace-tests")] == [
        handle.instance_id
    ]
    _wait_until(clouds, 5.4)  # us-east-1a went down at hour 5
    assert clouds.interrupted == [handle.instance_id]
    assert clouds.running_instances("trace-tests") == []
    aws.release(handle)
