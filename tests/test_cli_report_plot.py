"""report: --group-by region, --flow by function name, --plot, --json alias, bad ledger URLs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.cli import main
from prefect_cloudsched.cli.report_plot import daily_totals
from prefect_cloudsched.core.records import PlacementRecord
from prefect_cloudsched.testing.records import placement_record


def _record(
    i: int, *, flow: str, cloud: str, region: str, option: str, day: int
) -> PlacementRecord:
    start = datetime(2026, 11, 1, 12, tzinfo=UTC) + timedelta(days=day, minutes=i)
    return placement_record(
        f"t{i % 2}", cost_usd=0.5 + 0.1 * (i % 3), baseline_usd=1.2, started_at=start,
        cloud=cloud, option=option, flow_run_id=f"fr-{day}", flow_name=flow,
        task_run_id=f"tr-{i}", region=region, offer_key=f"{cloud}/{region}/g5.xlarge/{option}",
    )  # fmt: skip


@pytest.fixture
def ledger_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    options = ("spot", "on-demand", "reserved")
    places = (("aws", "us-east-1"), ("gcp", "us-central1"), ("aws", "eu-north-1"))
    records = [
        _record(i, flow="ml-pipeline" if i % 4 else "etl", cloud=places[i % 3][0],
                region=places[i % 3][1], option=options[i % 3], day=i % 9)
        for i in range(60)
    ]  # fmt: skip
    Ledger(url).record(records)
    return url


def test_group_by_region_sums_exactly(ledger_url, capsys):
    assert main(["report", "-g", "region", "--json", "--ledger", ledger_url]) == 0
    report = json.loads(capsys.readouterr().out)
    groups = {row["group"] for row in report["rows"]}
    assert groups == {"aws/us-east-1", "gcp/us-central1", "aws/eu-north-1"}
    total = sum(float(row["spend_usd"]) for row in report["rows"])
    assert total == pytest.approx(float(report["total"]["spend_usd"]))


def test_flow_accepts_the_function_name(ledger_url, capsys):
    assert main(["report", "--flow", "ml_pipeline", "-f", "json", "--ledger", ledger_url]) == 0
    by_function = json.loads(capsys.readouterr().out)
    assert main(["report", "--flow", "ml-pipeline", "-f", "json", "--ledger", ledger_url]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert by_function == by_name
    assert [row["group"] for row in by_name["rows"]] == ["ml-pipeline"]


def test_json_contradicting_format_is_one_error(ledger_url, capsys):
    assert main(["report", "--json", "-f", "csv", "--ledger", ledger_url]) == 2
    assert capsys.readouterr().err.startswith("Error: --json contradicts --format csv")


def test_plot_writes_a_png_with_daily_totals(ledger_url, tmp_path, capsys):
    png = tmp_path / "spend.png"
    assert main(["report", "--plot", str(png), "--ledger", ledger_url]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = Ledger(ledger_url).placements()
    days, by_option, baseline = daily_totals(records, "option")
    assert len(days) == 9 and set(by_option) == {"spot", "on-demand", "reserved"}
    assert sum(map(sum, by_option.values())) == sum(r.cost_micro for r in records)
    assert sum(baseline) == sum(r.baseline_micro for r in records)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--plot", "spend.jpg"], "--plot 'spend.jpg' must name a .png file"),
        (["--plot", "/proc/nope/x.png"], "--plot '/proc/nope/x.png' is not writable"),
        (["--since", "99999999999d"], "too long"),
        (["--ledger", "postgresql://u:secret@h:notaport/db"], "its port must be a number"),
        (["--ledger", "not a url"], "not a database URL"),
    ],
)
def test_bad_report_input_is_one_line(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and fragment in err and "secret" not in err
    assert len([line for line in err.splitlines() if line.startswith("Error:")]) == 1
