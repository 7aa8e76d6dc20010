"""Forecast inputs the audit of 6 December found mishandled: daily or sparse rows taken as
hourly, gaps inflating the intervals, and unhelpful messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefect_cloudsched.cli import main
from prefect_cloudsched.core import forecast as fc
from prefect_cloudsched.core.forecast import combined
from prefect_cloudsched.errors import InputError


def sinusoid(hours: int = 240, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    h = np.arange(hours)
    values = 10 + 3 * np.sin(2 * np.pi * h / 24) + rng.normal(0, 0.8, hours)
    return pd.Series(values, index=pd.RangeIndex(hours, name="hour"))


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


# --------------------------------------------------------------------------- daily / sparse


def test_daily_rows_are_refused_as_not_hourly(tmp_path: Path, capsys) -> None:
    days = pd.date_range("2026-01-01", periods=60, freq="D")
    path = tmp_path / "daily.csv"
    path.write_text("timestamp,gpu_hours\n" + "".join(f"{d.date()},{i}\n" for i, d in
                                                       enumerate(days)))  # fmt: skip
    assert main(["forecast", str(path), "--horizon", "3"]) == 2
    line = one_error_line(capsys)
    assert "only 4% of the 672 hours" in line and "24 h apart (daily data?)" in line
    assert "give one row per hour" in line


def test_mostly_missing_hours_are_refused_and_half_observed_ones_are_not() -> None:
    y = sinusoid()
    with pytest.raises(InputError, match=r"only 20% of the 236 hours .* rows are 5 h apart"):
        fc.fit_forecast(y.iloc[::5], 3, model="combined")
    with pytest.raises(InputError, match="only 20%"):
        fc.backtest(y.iloc[::5], horizon=3, origins=1, models=["naive"])
    fc.fit_forecast(y.iloc[::2], 3, model="seasonal-naive")  # half the hours: accepted


def test_combined_fallback_counts_observed_hours_not_the_span() -> None:
    y = sinusoid(90)
    y.iloc[1:88:2] = np.nan  # 46 of 90 hours observed: over half, under two days
    result = fc.fit_forecast(y, 3, model="combined")
    assert result.method == "seasonal_naive"
    assert "history has 46 observed hours (of 90); the combined forecast needs at least 48" in (
        result.fallback_reason or ""
    )


# --------------------------------------------------------------------------- gaps


def test_local_scale_ignores_filled_gap_hours() -> None:
    y = sinusoid().to_numpy()
    gapped = y.copy()
    gapped[100:130] = np.nan
    full = combined._local_scale(y, len(y))
    assert combined._local_scale(gapped, len(y)) == full  # the gap is outside the last day
    after = combined._local_scale(gapped, 138)  # 7 observed changes in the day before
    assert after == pytest.approx(np.nanmean(np.abs(np.diff(gapped))))
    assert after > 0.5 * combined._local_scale(y, 138)


def test_a_30_hour_gap_hardly_widens_the_first_hours_95_interval() -> None:
    y = sinusoid()
    gapped = y.drop(index=range(100, 130))
    config = fc.ForecastConfig(transform="none", weekly_fourier=0)
    width = {
        name: (f.frame["hi95"] - f.frame["lo95"]).iloc[:3].max()
        for name, f in (
            ("full", fc.fit_forecast(y, 6, config, model="combined")),
            ("gap", fc.fit_forecast(gapped, 6, config, model="combined")),
        )
    }
    assert width["gap"] < 1.5 * width["full"]  # was 4.5x (31.8 against 7.0)


# --------------------------------------------------------------------------- messages


def test_a_backtest_too_short_for_one_origin_says_how_long_the_series_must_be() -> None:
    with pytest.raises(InputError) as short:
        fc.backtest(sinusoid(60), horizon=24, origins=1, models=["naive"])
    message = str(short.value)
    assert "one origin needs 120 hours (96 of history plus the 24 scored)" in message
    assert "--origins 0" not in message
    with pytest.raises(InputError, match=r"3 origins need 168; give a longer series"):
        fc.backtest(sinusoid(100), horizon=24, origins=3, models=["naive"])
    with pytest.raises(InputError, match=r"\(216 hours\); use --origins 2 or fewer"):
        fc.backtest(sinusoid(150), horizon=24, origins=5, models=["naive"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hour,gpu_hours\n0,1\n1,NaN\n", "line 3 (hour 1): gpu_hours value 'NaN' is not a number;"
         " leave the cell blank for a missing hour"),
        ("hour,gpu_hours\n0,1\n1,NA\n", "leave the cell blank for a missing hour"),
        ("hour;gpu_hours\n0;1\n1;2\n", "bad.csv is semicolon-separated (header 'hour;gpu_hours');"
         " write it comma-separated, e.g. 'hour,gpu_hours'"),
        ("hour\tgpu_hours\n0\t1\n", "is tab-separated"),
    ],
)  # fmt: skip
def test_nan_cells_and_other_separators_say_the_fix(
    tmp_path: Path, capsys, content: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["forecast", str(path)]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("output", ["csv", "markdown", "table"])
def test_every_format_names_the_hour_column_and_writes_iso_hours_like_json(
    tmp_path: Path, capsys, output: str
) -> None:
    hours = pd.date_range("2026-03-01", periods=240, freq="h")
    path = tmp_path / "ts.csv"
    path.write_text("timestamp,gpu_hours\n" + "".join(
        f"{h.isoformat()}Z,{v:.3f}\n" for h, v in zip(hours, sinusoid(), strict=True)))  # fmt: skip
    args = ["forecast", str(path), "--horizon", "2", "--transform", "none", "--weekly-fourier", "0"]
    assert main([*args, "-f", output]) == 0
    text = capsys.readouterr().out
    assert "2026-03-11T00:00:00" in text and "2026-03-11 00:00:00" not in text
    assert "timestamp" not in text and "hour" in text
    if output == "csv":
        assert text.splitlines()[0] == "hour,point,lo80,hi80,lo95,hi95"
