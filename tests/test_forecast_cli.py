"""``prefect-cloudsched forecast``: output shapes, the fallback warning, bad input -> exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prefect_cloudsched.cli import main

FAST = ["--transform", "none", "--weekly-fourier", "0", "--window", "192"]
ARIMA = [*FAST, "--model", "arima"]


def write_series(path: Path, hours: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    h = np.arange(hours)
    gpu = 50 + 20 * np.cos(2 * np.pi * (h % 24 - 15) / 24) + rng.normal(0, 2, hours)
    lines = ["hour,gpu_hours,jobs_submitted"]
    lines += [f"{i},{g:.3f},{i % 7}" for i, g in zip(h, gpu, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def series_csv(tmp_path: Path) -> Path:
    return write_series(tmp_path / "series.csv", 10 * 24)


def test_forecast_json_has_rows_and_model_info(series_csv: Path, capsys) -> None:
    assert main(["forecast", str(series_csv), "--horizon", "6", "--json", *ARIMA]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "sarimax" and out["model"].startswith("SARIMAX(")
    assert out["column"] == "gpu_hours" and out["fallback_reason"] is None
    assert [row["hour"] for row in out["rows"]] == list(range(240, 246))
    for row in out["rows"]:
        assert row["lo95"] <= row["lo80"] <= row["point"] <= row["hi80"] <= row["hi95"]


def test_selection_option_switches_between_validation_and_plain_aic(
    series_csv: Path, capsys
) -> None:
    assert main(["forecast", str(series_csv), "--horizon", "6", "--json", *ARIMA]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["validation_mae"] > 0
    args = ["forecast", str(series_csv), "--horizon", "6", "--json", "--selection", "aic"]
    assert main([*args, *ARIMA]) == 0
    assert json.loads(capsys.readouterr().out)["validation_mae"] is None
    assert main(["forecast", str(series_csv), "--selection", "bic", *FAST]) == 2


def test_forecast_table_names_the_model_and_lists_the_hours(series_csv: Path, capsys) -> None:
    assert main(["forecast", str(series_csv), "--horizon", "3", *ARIMA]) == 0
    out = capsys.readouterr().out
    assert "Model: SARIMAX(" in out
    for word in ("hour", "point", "lo80", "hi80", "lo95", "hi95", "240", "242"):
        assert word in out


def test_short_history_warns_about_the_fallback(tmp_path: Path, capsys) -> None:
    path = write_series(tmp_path / "short.csv", 30)
    assert main(["forecast", str(path), "--horizon", "4", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["method"] == "seasonal_naive"
    assert "Warning" in captured.err and "fell back" in captured.err
    assert "seasonal-naive(24)" in captured.err and "30 observed hours" in captured.err


def test_backtest_json_has_one_object_per_model(series_csv: Path, capsys) -> None:
    assert main(["forecast", str(series_csv), "--backtest", "--origins", "2", "--json", *FAST]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == [
        "combined", "arima", "ets", "theta", "naive", "seasonal_naive_24", "seasonal_naive_168",
    ]  # fmt: skip
    for row in rows:
        assert {"mase", "smape", "coverage80", "coverage95", "fit_seconds"} <= set(row)
        assert row["forecasts"] == 48


def test_backtest_table_and_plot(series_csv: Path, tmp_path: Path, capsys) -> None:
    png = tmp_path / "bt.png"
    args = ["forecast", str(series_csv), "--backtest", "--origins", "2", "--plot", str(png), *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "MASE" in out and "seasonal_naive_168" in out and "arima used:" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forecast_plot_writes_png(series_csv: Path, tmp_path: Path) -> None:
    png = tmp_path / "fc.png"
    assert main(["forecast", str(series_csv), "--plot", str(png), *FAST]) == 0
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("hour,gpu_hours\n0,1,9\n1,2\n", [], "not a valid CSV"),
        ("hour,cpu_hours\n0,1\n", [], "not a column; use --column with one of: cpu_hours"),
        ("hour,gpu_hours\n0,1\n1,-3\n", [], "line 3 (hour 1): gpu_hours is negative"),
        ("hour,gpu_hours\n0,1\n1,lots\n", [], "line 3 (hour 1): gpu_hours value 'lots'"),
        ("", [], "is empty"),
        ("hour,gpu_hours\n0,1\n", ["--horizon", "0"], "--horizon must be at least 1"),
        ("hour,gpu_hours\n0,1\n", ["--horizon", "-5"], "--horizon must be at least 1"),
        ("hour,gpu_hours\n0,1\n", ["--backtest", "--origins", "0"], "--origins must be"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys, content: str, args: list[str], message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["forecast", str(path), *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_missing_file_and_too_many_origins_exit_2(series_csv: Path, capsys) -> None:
    assert main(["forecast", str(series_csv.parent / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["forecast", str(series_csv), "--backtest", "--origins", "50", *FAST]) == 2
    assert "use --origins 6 or fewer" in capsys.readouterr().err


def test_combined_forecast_json_names_members_and_weights(series_csv: Path, capsys) -> None:
    assert main(["forecast", str(series_csv), "--horizon", "6", "--json", *FAST]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "combined" and out["model"].startswith("combined: ")
    assert set(out["weights"]) == set(out["members"]) and "arima" in out["members"]
    assert sum(out["weights"].values()) == pytest.approx(1.0, abs=1e-3)
    for row in out["rows"]:
        assert row["lo95"] <= row["lo80"] <= row["point"] <= row["hi80"] <= row["hi95"]


def test_timestamped_csv_forecasts_the_next_iso_hours(tmp_path: Path, capsys) -> None:
    hours = 10 * 24
    values = 50 + 20 * np.cos(2 * np.pi * (np.arange(hours) % 24) / 24)
    stamps = [f"2026-03-{1 + i // 24:02d}T{i % 24:02d}:00:00Z" for i in range(hours)]
    path = tmp_path / "ts.csv"
    path.write_text("timestamp,gpu_hours\n" + "".join(
        f"{s},{v:.3f}\n" for s, v in zip(stamps, values, strict=True)
    ))  # fmt: skip
    assert main(["forecast", str(path), "--horizon", "2", "--json", *FAST]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["hour"] for r in rows] == ["2026-03-11T00:00:00", "2026-03-11T01:00:00"]


def test_bad_timestamp_exits_2_naming_the_column_and_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ts.csv"
    path.write_text("timestamp,gpu_hours\n2026-03-01T00:00:00Z,1\n2026-13-01T01:00:00Z,2\n")
    assert main(["forecast", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ts.csv line 3: timestamp '2026-13-01T01:00:00Z' is not an ISO 8601 time" in err


def test_plan_uses_the_combined_forecast_by_default(series_csv: Path, capsys) -> None:
    args = ["plan", str(series_csv), "--gpu-type", "A100", "--horizon", "24", "--json"]
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["forecast"]["method"] == "combined"
    assert payload["forecast"]["model"].startswith("combined: ")
