"""Ledger storage and the cost report built on it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_cloudsched.adapters.ledger import SCHEMA_VERSION, BufferedWriter, Ledger, meta_table
from prefect_cloudsched.cli import main
from prefect_cloudsched.core.records import PlacementRecord, to_micro, to_usd
from prefect_cloudsched.core.report import build_report, render_csv, render_markdown
from prefect_cloudsched.errors import LedgerError
from prefect_cloudsched.testing.records import placement_record

T0 = datetime(2026, 11, 1, 9, tzinfo=UTC)


def record(
    task: str = "train",
    *,
    flow: str = "pipe",
    cost: float = 0.3,
    base: float = 1.0,
    option: str = "spot",
    cloud: str = "aws",
    start: datetime = T0,
    interruptions: int = 0,
) -> PlacementRecord:
    wasted = to_micro(cost) if interruptions else 0
    return placement_record(
        task, cost_usd=cost, baseline_usd=base, started_at=start, cloud=cloud, option=option,
        flow_name=flow, interruptions=interruptions, wasted_micro=wasted, explanation="chose ...",
    )  # fmt: skip


@pytest.fixture
def ledger(any_ledger_url: str) -> Ledger:
    """The same tests on SQLite and on PostgreSQL (``tests/ledger_backends.py``)."""
    return Ledger(any_ledger_url)


def test_money_round_trips_exactly() -> None:
    assert to_micro(0.1) + to_micro(0.2) == to_micro(0.3)
    assert to_usd(to_micro(1.234567)) == Decimal("1.234567")


def test_ledger_round_trip_filters_and_wal(ledger: Ledger) -> None:
    rows = [record("a"), record("b", flow="other", start=T0 + timedelta(days=1))]
    ledger.record(rows)
    got = ledger.placements()
    assert [r.task_name for r in got] == ["a", "b"]
    assert got[0].started_at == T0 and got[0].cost_micro == to_micro(0.3)
    assert [r.task_name for r in ledger.placements(flow_name="other")] == ["b"]
    assert [r.task_name for r in ledger.placements(since=T0 + timedelta(hours=1))] == ["b"]
    assert [r.task_name for r in ledger.placements(until=T0 + timedelta(hours=1))] == ["a"]
    if ledger.is_sqlite:
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert ledger.schema_version == SCHEMA_VERSION


def test_newer_schema_is_refused(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(meta_table).values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(LedgerError, match="upgrade prefect-cloudsched"):
        Ledger(ledger.url)


def test_bad_urls_are_one_line_errors_without_passwords() -> None:
    with pytest.raises(LedgerError) as info:
        Ledger("postgresql+psycopg://user:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(info.value)
    with pytest.raises(LedgerError, match="not a database URL"):
        Ledger("definitely not a url")


def test_buffered_writer_flushes_everything_on_close(ledger: Ledger) -> None:
    writer = BufferedWriter(ledger, interval=0.05)
    for i in range(250):
        writer.put(record(f"t{i}"))
    writer.close()
    assert len(ledger.placements()) == 250 and not writer.errors


def test_plans_and_instances(ledger: Ledger) -> None:
    assert ledger.latest_plan() is None
    ledger.record_plan(
        name="p1",
        status="optimal",
        expected_micro=1,
        ondemand_micro=2,
        plan={"reserved": [{"capacity_key": "aws/us-east-1/g5.xlarge", "count": 2}]},
        created_at=T0,
    )
    ledger.record_plan(
        name="p2",
        status="optimal",
        expected_micro=1,
        ondemand_micro=2,
        plan={"reserved": []},
        created_at=T0 + timedelta(hours=1),
    )
    assert ledger.latest_plan()["name"] == "p2"
    ledger.upsert_instance(
        instance_id="i-1",
        cloud="aws",
        region="us-east-1",
        zone=None,
        offer_key="k",
        owner_id="me",
        run_id="r",
        state="running",
        launched_at=T0,
    )
    ledger.upsert_instance(instance_id="i-1", state="terminated", terminated_at=T0)
    assert [r["state"] for r in ledger.instances()] == ["terminated"]


def test_report_groups_and_totals() -> None:
    rows = [
        record("a", cost=0.3, base=1.0),
        record("b", cost=1.0, base=1.0, option="on-demand"),
        record("a", cost=0.2, base=0.0, interruptions=1),
    ]
    report = build_report(rows, "task")
    assert [r.group for r in report.rows] == ["a", "b"]
    assert report.total.spend == Decimal("1.5") and report.total.baseline == Decimal("2")
    assert report.total.savings_pct == pytest.approx(25.0)
    assert report.total.interruptions == 1
    assert "| **TOTAL** |" in render_markdown(report)
    assert render_csv(report).splitlines()[-1].startswith("TOTAL,3,")
    empty = build_report([], "day")
    assert empty.rows == () and empty.total.savings_pct is None
    with pytest.raises(ValueError, match="group_by"):
        build_report(rows, "color")


def test_tasks_column_counts_placement_attempts_only() -> None:
    """Boot/idle and checkpoint-transfer rows are money, not attempts; a reaped orphan's row
    is the only trace of the attempt that launched it, so it counts."""
    from dataclasses import replace

    from prefect_cloudsched.core.instance_time import OVERHEAD_STATE, OVERHEAD_TASK
    from prefect_cloudsched.core.records import REAPED_STATE, TRANSFER_OPTION, TRANSFER_STATE

    tasks = [record("a"), record("a", interruptions=1), record("b")]
    boot = replace(record(OVERHEAD_TASK, cost=0.1, base=0.1), state=OVERHEAD_STATE)
    move = replace(record("a", cost=0.05, base=0.0, option=TRANSFER_OPTION), state=TRANSFER_STATE)
    orphan = replace(record("orphan of a", cost=0.2, base=0.2), state=REAPED_STATE)
    rows = [*tasks, boot, move, orphan]
    report = build_report(rows, "task")
    assert report.total.tasks == 4
    assert {r.group: r.tasks for r in report.rows} == {
        "a": 2, "b": 1, OVERHEAD_TASK: 0, "orphan of a": 1
    }  # fmt: skip
    assert report.total.spend_micro == sum(r.cost_micro for r in rows)  # money still counts
    assert render_csv(report).splitlines()[-1].startswith("TOTAL,4,")


def test_negative_amounts_print_the_sign_before_the_dollar() -> None:
    report = build_report([record("a", cost=0.232, base=0.030806)], "task")
    table = render_markdown(report)
    assert "-$0.201194" in table and "$-" not in table
    assert build_report([record("z", cost=0.0, base=0.0)], "task").total.savings == 0
    assert "$-" not in render_markdown(build_report([record("z", cost=0.0, base=0.0)], "task"))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 10**7), st.integers(0, 10**7)), max_size=30
    ),
    st.sampled_from(["flow", "task", "cloud", "option", "instance", "day"]),
)
def test_report_total_equals_sum_of_groups(items: list, group_by: str) -> None:
    rows = [record(t, cost=c / 1e6, base=b / 1e6) for t, c, b in items]
    report = build_report(rows, group_by)
    assert sum(r.spend_micro for r in report.rows) == report.total.spend_micro
    assert sum(r.baseline_micro for r in report.rows) == report.total.baseline_micro
    assert report.total.spend_micro == sum(r.cost_micro for r in rows)


def test_report_cli_formats_and_errors(ledger: Ledger, capsys) -> None:
    ledger.record([record("a"), record("b", cloud="gcp", option="on-demand", cost=1, base=1)])
    assert main(["report", "--ledger", ledger.url, "-g", "cloud", "-f", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["group"] for r in data["rows"]] == ["aws", "gcp"]
    assert data["total"]["spend_usd"] == "1.300000" and data["total"]["savings_pct"] == 35.0
    assert main(["report", "--ledger", ledger.url, "-f", "csv", "--flow", "nope"]) == 0
    empty_total = capsys.readouterr().out.splitlines()[-1]
    assert empty_total.startswith("TOTAL,0,0,0.000000,0.000000,0.000000,,0,0.000000,")
    assert main(["report", "--ledger", ledger.url]) == 0
    assert "saved 35.0%" in capsys.readouterr().out
    for bad in (
        ["report", "-g", "colour"],
        ["report", "--since", "whenever"],
        ["report", "--since", "2026-11-02", "--until", "2026-11-01"],
        ["report", "--ledger", "::bad::"],
    ):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0].startswith("Error: ") and "Traceback" not in "\n".join(err)


def test_report_last_run_keeps_only_the_latest_flow_run(ledger: Ledger, capsys) -> None:
    from dataclasses import replace

    old = record("a", cost=0.5)
    new = replace(record("b", cost=0.2, start=T0 + timedelta(hours=1)), flow_run_id="fr-2")
    ledger.record([old, new])
    assert main(["report", "--ledger", ledger.url, "-g", "task", "-f", "json", "--last-run"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["group"] for r in data["rows"]] == ["b"]
    assert data["total"]["spend_usd"] == "0.200000"


def test_prices_cli(capsys) -> None:
    assert (
        main(
            [
                "prices",
                "--gpu",
                "a10g",
                "--option",
                "spot",
                "--cloud",
                "aws",
                "-f",
                "json",
                "--limit",
                "3",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["gpu_type"] == "A10G" and r["option"] == "spot" for r in rows)
    assert rows == sorted(rows, key=lambda r: r["usd_per_hour"])
    assert main(["prices", "--max-price", "0.05", "-f", "csv", "--limit", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cloud,region") and all(
        float(x.split(",")[9]) <= 0.05 for x in lines[1:]
    )
    for bad in (
        ["prices", "--gpu", "B300X"],
        ["prices", "--cloud", "azure"],
        ["prices", "--option", "cheap"],
        ["prices", "--region", "mars-1"],
    ):
        assert main(bad) == 2
        assert capsys.readouterr().err.startswith("Error: ")


def test_redact_url_hides_userinfo_and_query_secrets() -> None:
    from prefect_cloudsched.adapters.ledger import redact_url

    shown = redact_url("postgresql+psycopg://bob:hunter2@db/ledger?sslmode=require&password=s3cr")
    assert "hunter2" not in shown and "s3cr" not in shown
    assert "sslmode=require" in shown and "bob" in shown
    assert redact_url("sqlite:///x/ledger.db") == "sqlite:///x/ledger.db"
    assert redact_url("::nonsense::") == "<unparseable database URL>"


def test_every_prices_help_example_parses(capsys) -> None:
    """The examples of `prices --help` / `prices refresh --help` use options that exist
    (``--help`` after them: click rejects an unknown option before printing help, and no
    example reaches the network)."""
    import re
    import shlex

    from prefect_cloudsched.cli import prices_cmd

    texts = [prices_cmd.prices_app.info.help or ""]
    texts += [c.callback.__doc__ or "" for c in prices_cmd.prices_app.registered_commands]
    examples = re.findall(r"`prefect-cloudsched (prices[^`]*)`", "\n".join(texts))
    assert any(e.startswith("prices refresh") for e in examples)
    for example in examples:
        assert main([*shlex.split(example), "--help"]) == 0, example
        capsys.readouterr()
