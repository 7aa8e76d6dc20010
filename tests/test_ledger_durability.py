"""No ledger row is ever lost; day and month caps hold across processes (SQLite and PostgreSQL).

Issue 11, observation 4 (40 of 40 rows lost behind a held SQLite write lock) and the shared
day cap of observation 3 (four processes started together crossed it 2.76×).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from prefect_cloudsched.adapters.ledger import (
    PLAN_BOUGHT,
    PLAN_DRAFT,
    SCHEMA_VERSION,
    BufferedWriter,
    Ledger,
    meta_table,
    metadata,
)
from prefect_cloudsched.cli import main
from prefect_cloudsched.core.budget import DAY_CAP, MONTH_CAP
from prefect_cloudsched.core.records import PlacementRecord, to_micro
from prefect_cloudsched.testing.ledger_load import (
    hold_sqlite_write_lock,
    run_writers,
    sample_placement,
)

T0 = datetime(2026, 11, 1, 9, tzinfo=UTC)


def row(number: int, *, cost_micro: int = 1000, start: datetime = T0, **extra) -> PlacementRecord:
    return sample_placement("fr-1", number, cost_micro=cost_micro, started_at=start, **extra)


# ---------------------------------------------------------------------- no row lost
LOCK_SECONDS = 3.0  # the fault suite holds the lock for the full 25 s


def test_rows_written_behind_a_held_write_lock_are_journaled_then_replayed(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    url = f"sqlite:///{database}"
    Ledger(url).dispose()
    holder = hold_sqlite_write_lock(database, LOCK_SECONDS)
    try:
        ledger = Ledger(url, busy_timeout_s=0.1)
        writer = BufferedWriter(ledger, interval=0.02, retry_seconds=0.3, close_wait_s=0.1)
        for number in range(40):
            writer.put(row(number))
        writer.close()
        assert writer.written_rows == 0 and writer.lost_rows == 0
        assert writer.deferred_rows == 40 and writer.journal_path.endswith("ledger.db.pending")
        assert ledger.pending_journal_rows() == 40
    finally:
        holder.wait()
    reopened = Ledger(url)  # the next open replays the journal
    assert sorted(r.task_name for r in reopened.placements()) == sorted(f"t{n}" for n in range(40))
    assert reopened.pending_journal_rows() == 0
    assert len(Ledger(url).placements()) == 40  # replayed once, never twice


def test_a_lock_shorter_than_the_retry_window_costs_no_journal(tmp_path: Path) -> None:
    database = tmp_path / "ledger.db"
    url = f"sqlite:///{database}"
    Ledger(url).dispose()
    holder = hold_sqlite_write_lock(database, 1.0)
    try:
        writer = BufferedWriter(Ledger(url, busy_timeout_s=0.1), interval=0.02, retry_seconds=20)
        for number in range(10):
            writer.put(row(number))
        writer.close()
    finally:
        holder.wait()
    assert (writer.written_rows, writer.deferred_rows, writer.lost_rows) == (10, 0, 0)
    assert len(Ledger(url).placements()) == 10


def test_interruptions_go_through_the_writer_too(any_ledger_url: str) -> None:
    ledger = Ledger(any_ledger_url)
    writer = BufferedWriter(ledger, interval=0.02)
    writer.put_interruption(
        flow_run_id="fr",
        task_run_id="tr",
        task_name="t",
        offer_key="k",
        instance_id="i-1",
        wasted_micro=7,
    )
    writer.close()
    assert [(r["instance_id"], r["wasted_micro"]) for r in ledger.interruptions()] == [("i-1", 7)]


def test_journal_replay_is_idempotent_per_batch(any_ledger_url: str) -> None:
    ledger = Ledger(any_ledger_url)
    ledger.journal_placements([row(1), row(2)])
    ledger.journal_placements([row(3, reservation_source="plan", deadline_at_risk=True)])
    batches = ledger.journal._read(ledger.journal.path.read_text())
    ledger._apply_batches(batches)  # a replay that crashed before truncating the file ...
    assert ledger.replay_journal() == 3  # ... is replayed again without duplicating a row
    got = ledger.placements()
    assert [r.task_name for r in got] == ["t1", "t2", "t3"]
    assert got[2].reservation_source == "plan" and got[2].deadline_at_risk is True
    assert ledger.pending_journal_rows() == 0


def test_report_says_when_a_journal_is_pending(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.record([row(1)])
    ledger.journal_placements([row(2), row(3)])
    assert main(["report", "--ledger", url]) == 0
    out = capsys.readouterr().out
    assert "2 ledger row(s) are waiting in the journal" in out
    assert main(["report", "--ledger", url, "-f", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["tasks"] == 1  # JSON stays JSON; the notice goes to stderr


# ---------------------------------------------------------------------- missing database
def test_report_of_a_missing_database_is_an_error_and_creates_nothing(
    tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "typo" / "dir" / "l.db"
    assert main(["report", "--ledger", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "does not exist" in err[0]
    assert not missing.exists() and not missing.parent.exists()


def test_report_of_a_postgres_database_without_a_ledger_creates_no_table(
    postgres_url: str, capsys
) -> None:
    assert main(["report", "--ledger", postgres_url]) == 2
    assert "holds no prefect-cloudsched ledger" in capsys.readouterr().err
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


# ---------------------------------------------------------------------- plans and migration
def test_a_saved_plan_is_a_draft_until_bought(any_ledger_url: str) -> None:
    ledger = Ledger(any_ledger_url)
    plan = {"reserved": [{"capacity_key": "aws/us-east-1/p4d.24xlarge", "count": 4}]}
    plan_id = ledger.record_plan(
        name="p", status="optimal", expected_micro=1, ondemand_micro=2, plan=plan
    )
    assert ledger.latest_plan()["purchase_status"] == PLAN_DRAFT
    assert ledger.bought_plan() is None  # a draft is no capacity
    ledger.mark_plan_bought(plan_id)
    bought = ledger.bought_plan()
    assert bought["id"] == plan_id and bought["purchase_status"] == PLAN_BOUGHT
    assert bought["bought_at"] is not None and bought["reserved"] == plan["reserved"]


def test_a_v1_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    v2_only = {"reservation_source", "budget_hold_id", "deadline_at_risk", "purchase_status"}
    v1 = sa.MetaData()
    for table in metadata.sorted_tables:
        if table.name in ("budget_holds", "journal_batches"):
            continue
        columns = [c.copy() for c in table.columns if c.name not in v2_only | {"bought_at"}]
        sa.Table(table.name, v1, *columns)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        v1.create_all(conn)
        conn.execute(meta_table.insert().values(key="schema_version", value="1"))
        conn.execute(
            v1.tables["plans"]
            .insert()
            .values(
                created_at=T0,
                name="old",
                status="optimal",
                expected_micro=1,
                ondemand_micro=2,
                plan_json="{}",
            )
        )
    engine.dispose()
    ledger = Ledger(url)
    assert ledger.schema_version == SCHEMA_VERSION == 2
    assert ledger.latest_plan()["purchase_status"] == PLAN_DRAFT and ledger.bought_plan() is None
    ledger.record([row(1, budget_hold_id=5)])
    assert ledger.placements()[0].budget_hold_id == 5


# ---------------------------------------------------------------------- shared caps
def test_holds_settle_release_and_count_once(any_ledger_url: str) -> None:
    ledger = Ledger(any_ledger_url)
    now = datetime.now(UTC)
    caps = {DAY_CAP: 10_000, MONTH_CAP: 25_000}
    ledger.record([row(0, cost_micro=2_000, start=now)])  # a run without holds
    first = ledger.hold_budget(caps, 5_000, "run-a", now=now)
    assert first.hold_id is not None and first.overruns == ()
    refused = ledger.hold_budget(caps, 3_001, "run-b", now=now)  # 2000 + 5000 + 3001 > 10000
    assert refused.refused and refused.overruns[0].cap == DAY_CAP
    assert refused.overruns[0].committed_micro == 7_000
    soft = ledger.hold_budget(caps, 3_001, "run-b", hard=False, now=now)
    assert soft.hold_id is not None and [o.cap for o in soft.overruns] == [DAY_CAP]
    ledger.release_hold(soft.hold_id)
    assert ledger.window_spend(now)[DAY_CAP] == 7_000
    ledger.settle_hold(first.hold_id, 4_000)  # its row names the hold: counted once
    ledger.record([row(1, cost_micro=4_000, start=now, budget_hold_id=first.hold_id)])
    assert ledger.window_spend(now) == {DAY_CAP: 6_000, MONTH_CAP: 6_000}
    grown = ledger.hold_budget(caps, 1_000, "run-c", now=now)
    assert ledger.extend_hold(grown.hold_id, 4_000, caps) == ()  # 6000 + 4000 = cap
    assert [o.cap for o in ledger.extend_hold(grown.hold_id, 4_001, caps)] == [DAY_CAP]
    assert ledger.window_spend(now)[DAY_CAP] == 10_000  # the refused raise changed nothing
    assert ledger.release_run_holds("run-c") == 1
    assert ledger.window_spend(now)[DAY_CAP] == 6_000
    yesterday = now - timedelta(days=1)
    assert ledger.window_spend(yesterday)[DAY_CAP] == 0


def test_four_processes_started_together_share_one_day_cap(any_ledger_url: str) -> None:
    outcome = run_writers(
        any_ledger_url,
        processes=4,
        tasks=25,
        day_cap_micro=to_micro(0.05),
        hold_micro=to_micro(0.001),
        actual_micro=to_micro(0.001),
    )
    assert outcome.day_spend_micro <= outcome.day_cap_micro
    assert outcome.admitted == 50 and outcome.refused == 50  # exactly the cap, not more
    assert outcome.rows_lost == 0 and outcome.rows_found == outcome.admitted


def test_eight_processes_times_150_tasks_lose_no_row_and_keep_the_cap(postgres_url: str) -> None:
    outcome = run_writers(
        postgres_url,
        processes=8,
        tasks=150,
        day_cap_micro=900_000,
        hold_micro=1_000,
        actual_micro=800,
    )
    assert outcome.tasks == 1200 and outcome.admitted + outcome.refused == 1200
    assert outcome.rows_found == outcome.admitted == outcome.rows_written_or_deferred
    assert outcome.rows_lost == 0
    assert outcome.day_spend_micro <= outcome.day_cap_micro
    assert outcome.refused > 0  # the cap really was the limit


def test_a_sqlite_uri_url_names_its_file_not_a_folder_called_file(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "sub" / "uri-ledger.db"
    ledger = Ledger(f"sqlite:///file:{db}?uri=true")
    assert db.parent.is_dir() and not (tmp_path / "file:").exists()
    assert ledger.journal.path == db.with_name("uri-ledger.db.pending")
