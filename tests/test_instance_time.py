"""Instance time no task paid (boot, idle between tasks, warm tail) is in the report (issue 13).

A task row is charged from its instance running to its end; the cloud bills from the launch
request to termination. The report derives the difference from the ledger's instance rows,
so its spend equals what the clouds bill.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.cli import main
from prefect_cloudsched.core.instance_time import (
    OVERHEAD_STATE,
    OVERHEAD_TASK,
    overhead_records,
)
from prefect_cloudsched.core.records import REAPED_STATE, to_micro
from prefect_cloudsched.testing.records import RECORD_START, placement_record

PRICE = 3.6  # USD per hour = 1,000 micro-dollars per second: every charge is exact
T0 = RECORD_START


def _task(name: str, start_s: float, seconds: float, instance: str = "i-1"):
    start = T0 + timedelta(seconds=start_s)
    cost = to_micro(PRICE * seconds / 3600)
    return placement_record(
        name, cost_usd=cost / 1e6, baseline_usd=cost / 1e6, started_at=start,
        ended_at=start + timedelta(seconds=seconds), runtime_s=seconds, instance_id=instance,
        price_micro_per_hour=to_micro(PRICE), option="on-demand",
    )  # fmt: skip


def _instance(instance: str, launched_s: float, terminated_s: float | None) -> dict:
    return {
        "instance_id": instance,
        "launched_at": T0 + timedelta(seconds=launched_s),
        "terminated_at": None if terminated_s is None else T0 + timedelta(seconds=terminated_s),
    }


def test_boot_gap_and_warm_tail_are_one_overhead_row_per_instance() -> None:
    # launch requested 20 s before the first task; 10 s idle between tasks; 30 s warm tail
    rows = [_task("a", 0, 60), _task("b", 70, 40)]
    [extra] = overhead_records(rows, [_instance("i-1", -20, 140)])
    assert extra.task_name == OVERHEAD_TASK and extra.state == OVERHEAD_STATE
    assert extra.cost_micro == to_micro(PRICE * 60 / 3600)  # 20 + 10 + 30 s
    assert extra.baseline_micro == extra.cost_micro  # claims no savings
    assert extra.runtime_s == 60
    billed = to_micro(PRICE * 160 / 3600)
    assert sum(r.cost_micro for r in [*rows, extra]) == billed


def test_no_row_when_the_tasks_paid_the_whole_lifetime_or_the_instance_is_unknown() -> None:
    rows = [_task("a", 0, 60)]
    assert overhead_records(rows, [_instance("i-1", 0, 60)]) == []
    assert overhead_records(rows, [_instance("i-other", -50, 60)]) == []
    assert overhead_records(rows, [{"instance_id": "i-1", "launched_at": None}]) == []
    reaped = replace(_task("orphan", 0, 60), state=REAPED_STATE)  # the reaper paid it all
    assert overhead_records([reaped], [_instance("i-1", -50, 60)]) == []


def test_a_running_instance_is_billed_until_now() -> None:
    rows = [_task("a", 0, 60)]
    [extra] = overhead_records(rows, [_instance("i-1", 0, None)], now=T0 + timedelta(seconds=90))
    assert extra.cost_micro == to_micro(PRICE * 30 / 3600)


def test_the_report_adds_the_overhead_so_spend_equals_the_bill(tmp_path, capsys) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.record([_task("a", 0, 60), _task("b", 70, 40)])
    ledger.upsert_instance(
        instance_id="i-1", cloud="aws", region="us-east-1", zone=None,
        offer_key="aws/us-east-1/g5.xlarge/on-demand", owner_id="me", run_id="fr-1",
        state="terminated", launched_at=T0 - timedelta(seconds=20),
        terminated_at=T0 + timedelta(seconds=140),
    )  # fmt: skip
    assert main(["report", "--ledger", ledger.url, "-g", "task", "-f", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["group"] for r in data["rows"]] == [OVERHEAD_TASK, "a", "b"]
    assert float(data["total"]["spend_usd"]) == PRICE * 160 / 3600


def test_a_time_window_sets_the_lifetime_against_all_the_instance_rows(tmp_path, capsys) -> None:
    """A warm instance whose tasks straddle --since is not counted as mostly idle."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'w.db'}")
    ledger.record([_task("a", 0, 3600), _task("b", 3600, 60)])  # back to back: no idle
    ledger.upsert_instance(
        instance_id="i-1", cloud="aws", region="us-east-1", zone=None,
        offer_key="aws/us-east-1/g5.xlarge/on-demand", owner_id="me", run_id="fr-1",
        state="terminated", launched_at=T0, terminated_at=T0 + timedelta(seconds=3660),
    )  # fmt: skip
    since = (T0 + timedelta(seconds=1800)).isoformat()
    argv = ["report", "--ledger", ledger.url, "-g", "task", "-f", "json", "--since", since]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["group"] for r in data["rows"]] == ["b"]  # no overhead row: nothing was idle


def test_an_instance_shorter_than_a_minute_is_billed_the_clouds_minute() -> None:
    rows = [_task("a", 0, 10)]  # launched, ran a 10 s task, ended: 15 s of life
    [extra] = overhead_records(rows, [_instance("i-1", -5, 10)])
    assert extra.cost_micro == to_micro(PRICE * (60 - 10) / 3600)
    reserved = [replace(rows[0], option="reserved")]  # paid by the commitment: no minimum
    [tail] = overhead_records(reserved, [_instance("i-1", -5, 10)])
    assert tail.cost_micro == to_micro(PRICE * 5 / 3600)


def _ledger_with_instance(tmp_path, *, run_id: str) -> tuple[Ledger, list]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    rows = [
        replace(_task("a", 0, 60), flow_run_id="fr-1"),
        replace(_task("b", 70, 40), flow_run_id="fr-1"),
    ]
    ledger.record(rows)
    ledger.upsert_instance(
        cloud="aws", region="us-east-1", zone=None, offer_key=rows[0].offer_key,
        owner_id="me", run_id=run_id, state="terminated", **_instance("i-1", -20, 140),
    )  # fmt: skip
    return ledger, rows


def test_a_runs_cost_artifact_counts_its_instances_boot_and_idle_like_the_report(
    tmp_path, monkeypatch
) -> None:
    # the artifact had counted the task rows only: 60.9 % saved where the report said 10.9 %
    from types import SimpleNamespace

    from prefect_cloudsched.prefect import runner, visibility

    ledger, rows = _ledger_with_instance(tmp_path, run_id="fr-1")
    published: list = []
    monkeypatch.setattr(visibility, "is_run_id", lambda value: True)
    monkeypatch.setattr(
        visibility, "publish_cost_artifacts", lambda records, **kw: published.append(records)
    )
    session = SimpleNamespace(ledger=ledger, flow_names={"fr-1": "pipe"}, refusals=[])
    runner._publish(session, rows)
    [shown] = published
    assert [r.task_name for r in shown] == ["a", "b", OVERHEAD_TASK]
    assert sum(r.cost_micro for r in shown) == to_micro(PRICE * 160 / 3600)  # the cloud's bill


def test_instance_overhead_finds_a_warm_instance_launched_by_another_run(tmp_path) -> None:
    from prefect_cloudsched.runtime.recording import instance_overhead

    ledger, rows = _ledger_with_instance(tmp_path, run_id="an-earlier-run")
    [extra] = instance_overhead(ledger, rows)
    assert extra.cost_micro == to_micro(PRICE * 60 / 3600)
    assert instance_overhead(ledger, [replace(r, instance_id=None) for r in rows]) == []
