"""Ledger faults and load for tests and the fault suite: a held write lock, many writers.

- :func:`hold_sqlite_write_lock`: another process takes SQLite's write lock
  (``BEGIN IMMEDIATE``) and keeps it for N seconds, as a long migration or a stuck writer would.
- :func:`run_together`: N copies of a process started at once, each reporting one JSON line.
- :func:`run_writers`: N processes started together, each placing M tasks against one shared
  day cap: hold the worst case in the ledger, write the placement row through the runner's
  :class:`~prefect_cloudsched.adapters.ledger.BufferedWriter`, settle at the real cost. Each
  process reports what it was admitted and wrote; the caller compares with the database.

Run as a module, it is one such writer process (``python -m ... worker URL ...``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect_cloudsched.core.records import PlacementRecord
from prefect_cloudsched.testing.records import placement_record

_LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS lock_holder (x INTEGER)")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    """
)


def hold_sqlite_write_lock(database: Path, seconds: float) -> subprocess.Popen[str]:
    """Start a process that holds ``database``'s write lock for ``seconds``; returns once held."""
    process = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(database), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "locked":
        process.kill()
        raise RuntimeError(f"the lock holder could not lock {database}")
    return process


@dataclass(frozen=True, slots=True)
class WritersOutcome:
    """What N writer processes said they did, and what the database holds."""

    processes: int
    tasks: int
    admitted: int
    refused: int
    rows_written_or_deferred: int
    rows_found: int
    day_cap_micro: int
    day_spend_micro: int
    seconds: float

    @property
    def rows_lost(self) -> int:
        """Admitted placements whose row is not in the database."""
        return max(0, self.admitted - self.rows_found)

    @property
    def cap_ratio(self) -> float:
        """Day spend ÷ day cap (≤ 1.00 when the cap held)."""
        return self.day_spend_micro / self.day_cap_micro


def run_together(
    argv: list[str],
    processes: int,
    *,
    what: str,
    timeout: float,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Start ``processes`` copies of ``argv`` at once; each one's report is the JSON of its last
    stdout line. A copy that fails or reports nothing raises, with the end of its stderr, and
    the copies still running are killed."""
    children = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    reports = []
    try:
        for child in children:
            out, err = child.communicate(timeout=timeout)
            lines = out.strip().splitlines()
            if child.returncode != 0 or not lines:
                raise RuntimeError(f"{what} failed: {err.strip()[-800:]}")
            reports.append(json.loads(lines[-1]))
    finally:  # one copy failed or timed out: the others are not left running
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return reports


def run_writers(
    url: str,
    *,
    processes: int,
    tasks: int,
    day_cap_micro: int,
    hold_micro: int,
    actual_micro: int,
    timeout: float = 600.0,
) -> WritersOutcome:
    """Start ``processes`` writers together against ``url`` and check the result."""
    from prefect_cloudsched.adapters.ledger import Ledger

    Ledger(url).dispose()  # create the schema once, before the race
    start_at = time.time() + 3.0  # every process imports, then all start at this instant
    t0 = time.perf_counter()
    reports = run_together(
        [
            sys.executable,
            "-m",
            "prefect_cloudsched.testing.ledger_load",
            "worker",
            url,
            str(tasks),
            str(day_cap_micro),
            str(hold_micro),
            str(actual_micro),
            str(start_at),
        ],
        processes,
        what="a writer process",
        timeout=timeout,
    )
    seconds = time.perf_counter() - t0
    ledger = Ledger(url)  # replays any journal the writers left
    run_ids = {r["run_id"] for r in reports}
    found = [r for r in ledger.placements() if r.flow_run_id in run_ids]
    spend = ledger.window_spend()
    ledger.dispose()
    from prefect_cloudsched.core.budget import DAY_CAP

    return WritersOutcome(
        processes=processes,
        tasks=processes * tasks,
        admitted=sum(r["admitted"] for r in reports),
        refused=sum(r["refused"] for r in reports),
        rows_written_or_deferred=sum(r["written"] + r["deferred"] for r in reports),
        rows_found=len(found),
        day_cap_micro=day_cap_micro,
        day_spend_micro=spend[DAY_CAP],
        seconds=seconds,
    )


def sample_placement(
    run_id: str,
    number: int,
    *,
    cost_micro: int,
    started_at: datetime | None = None,
    **extra: Any,
) -> PlacementRecord:
    """One 3-second on-demand A10G placement row (``extra`` sets any other field)."""
    start = started_at or datetime.now(UTC)
    return placement_record(
        f"t{number}",
        started_at=start,
        option="on-demand",
        flow_run_id=run_id,
        flow_name="ledger-load",
        task_run_id=f"{run_id}-{number}",
        price_micro_per_hour=1_006_000,
        ended_at=start + timedelta(seconds=3),
        runtime_s=3.0,
        cost_micro=cost_micro,
        baseline_micro=cost_micro,
        **extra,
    )


def _worker(
    url: str, tasks: int, day_cap: int, hold_micro: int, actual_micro: int, start_at: float
) -> dict[str, int | str]:
    from prefect_cloudsched.adapters.ledger import BufferedWriter, Ledger
    from prefect_cloudsched.core.budget import DAY_CAP

    ledger = Ledger(url)
    writer = BufferedWriter(ledger, interval=0.05)
    run_id = uuid.uuid4().hex
    caps = {DAY_CAP: day_cap}
    admitted = refused = 0
    time.sleep(max(0.0, start_at - time.time()))
    for number in range(tasks):
        result = ledger.hold_budget(caps, hold_micro, run_id, task_name=f"t{number}")
        if result.hold_id is None:
            refused += 1
            continue
        admitted += 1
        writer.put(
            sample_placement(run_id, number, cost_micro=actual_micro, budget_hold_id=result.hold_id)
        )
        ledger.settle_hold(result.hold_id, actual_micro)
    writer.close()
    return {
        "run_id": run_id,
        "admitted": admitted,
        "refused": refused,
        "written": writer.written_rows,
        "deferred": writer.deferred_rows,
        "lost": writer.lost_rows,
    }


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    url, tasks, cap, hold_micro, actual, start = sys.argv[2:8]
    report = _worker(url, int(tasks), int(cap), int(hold_micro), int(actual), float(start))
    print(json.dumps(report), flush=True)
