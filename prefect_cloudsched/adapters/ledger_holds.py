"""Day and month budget caps shared by every process writing to one ledger database.

A process that wants to start a placement asks the database for a *hold* of its worst-case
cost. The check ("recorded spend + every live hold + this one ≤ cap") and the insert of the
hold happen in one transaction under a database-wide lock — SQLite ``BEGIN IMMEDIATE``,
PostgreSQL ``pg_advisory_xact_lock`` — so processes started together are admitted one after
the other and can never cross one cap between them. When the placement ends the hold is
settled at what it really cost (or released if it never started).

What counts against a window (UTC day ``YYYY-MM-DD`` / month ``YYYY-MM``):

- placement rows that started in the window and carry no ``budget_hold_id`` (their spend is
  known only from the ledger), plus
- every hold made in the window: ``held`` at its amount, ``settled`` at its actual cost,
  ``released`` not at all. A placement row that names its hold is counted through the hold,
  so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from prefect_cloudsched.adapters.ledger_schema import budget_holds, placements, select_rows
from prefect_cloudsched.core.budget import DAY_CAP, MONTH_CAP, Overrun
from prefect_cloudsched.core.records import as_utc

WINDOW_CAPS = (DAY_CAP, MONTH_CAP)
HELD, SETTLED, RELEASED = "held", "settled", "released"


@dataclass(frozen=True, slots=True)
class HoldResult:
    """The ledger's answer to a hold request.

    Attributes:
        hold_id: The hold to settle or release later; ``None`` when a hard cap refused it.
        overruns: Caps the request crosses (under a soft cap the hold is still taken).
    """

    hold_id: int | None
    overruns: tuple[Overrun, ...]

    @property
    def refused(self) -> bool:
        """A hard cap refused the hold."""
        return self.hold_id is None


def _windows(now: datetime) -> tuple[str, str, datetime, datetime, datetime]:
    now = now.astimezone(UTC)
    day_start = datetime(now.year, now.month, now.day, tzinfo=UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    return (
        day_start.date().isoformat(),
        day_start.strftime("%Y-%m"),
        day_start,
        month_start,
        (next_month),
    )


def committed_micro(conn: Connection, now: datetime) -> dict[str, int]:
    """Spend counted against the day and month windows of ``now`` (see the module doc)."""
    day, month, day_start, month_start, next_month = _windows(now)
    unheld = placements.c.budget_hold_id.is_(None)

    def placed(since: datetime, until: datetime) -> int:
        query = sa.select(sa.func.coalesce(sa.func.sum(placements.c.cost_micro), 0)).where(
            unheld, placements.c.started_at >= since, placements.c.started_at < until
        )
        return int(conn.execute(query).scalar_one())

    counted = sa.case(
        (budget_holds.c.state == HELD, budget_holds.c.amount_micro),
        (budget_holds.c.state == SETTLED, budget_holds.c.actual_micro),
        else_=0,
    )

    def held(column: sa.Column, value: str) -> int:
        query = sa.select(sa.func.coalesce(sa.func.sum(counted), 0)).where(column == value)
        return int(conn.execute(query).scalar_one())

    return {
        DAY_CAP: placed(day_start, day_start + timedelta(days=1))
        + held(budget_holds.c.window_day, day),
        MONTH_CAP: placed(month_start, next_month) + held(budget_holds.c.window_month, month),
    }


def _overruns(
    committed: Mapping[str, int], caps: Mapping[str, int], amount_micro: int
) -> tuple[Overrun, ...]:
    return tuple(
        Overrun(cap, limit, committed[cap], amount_micro)
        for cap, limit in caps.items()
        if cap in WINDOW_CAPS and committed[cap] + amount_micro > limit
    )


class SharedBudget:
    """The ledger's budget-hold methods (mixed into ``Ledger``, which provides ``locked()``
    and ``engine``)."""

    engine: Any

    def locked(self) -> Any:  # pragma: no cover - provided by Ledger
        raise NotImplementedError

    def hold_budget(
        self,
        window_caps: Mapping[str, int],
        amount_micro: int,
        run_id: str,
        *,
        task_name: str = "",
        hard: bool = True,
        now: datetime | None = None,
    ) -> HoldResult:
        """Check the day/month caps every process shares and hold ``amount_micro``, in one
        locked transaction.

        Args:
            window_caps: Caps in micro-dollars keyed ``budget_per_day_usd`` /
                ``budget_per_month_usd`` (``BudgetPolicy.window_caps_micro()``; others ignored).
            amount_micro: The placement's worst-case cost.
            run_id: The flow run (its holds are released if its process dies).
            hard: Refuse when a cap would be crossed (soft: hold and report).

        Returns:
            :class:`HoldResult`: ``hold_id`` (``None`` = refused) and the overruns.
        """
        if amount_micro < 0:
            raise ValueError(f"amount_micro must be >= 0, got {amount_micro}")
        now = now or datetime.now(UTC)
        day, month, *_ = _windows(now)
        with self.locked() as conn:
            overruns = _overruns(committed_micro(conn, now), window_caps, amount_micro)
            if overruns and hard:
                return HoldResult(None, overruns)
            result = conn.execute(
                budget_holds.insert().values(
                    run_id=run_id,
                    task_name=task_name,
                    window_day=day,
                    window_month=month,
                    amount_micro=amount_micro,
                    state=HELD,
                    created_at=now,
                    updated_at=now,
                )
            )
            return HoldResult(int(result.inserted_primary_key[0]), overruns)

    def extend_hold(
        self,
        hold_id: int,
        new_amount_micro: int,
        window_caps: Mapping[str, int],
        *,
        hard: bool = True,
    ) -> tuple[Overrun, ...]:
        """Raise a live hold to ``new_amount_micro`` (a running task's accrued cost + a margin).

        Under a hard cap a raise that would cross a cap is refused and the hold keeps its
        amount: the caller stops the task before it spends more than it holds.
        """
        with self.locked() as conn:
            row = (
                conn.execute(sa.select(budget_holds).where(budget_holds.c.id == hold_id))
                .mappings()
                .one()
            )
            if row["state"] != HELD:
                raise ValueError(f"budget hold {hold_id} is {row['state']}, not held")
            extra = new_amount_micro - int(row["amount_micro"])
            if extra <= 0:
                return ()
            made = row["created_at"]
            made = as_utc(made)  # SQLite returns naive UTC
            overruns = _overruns(committed_micro(conn, made), window_caps, extra)
            if overruns and hard:
                return overruns
            conn.execute(
                budget_holds.update()
                .where(budget_holds.c.id == hold_id)
                .values(amount_micro=new_amount_micro, updated_at=datetime.now(UTC))
            )
            return overruns

    def settle_hold(self, hold_id: int, actual_micro: int) -> None:
        """Replace a hold by what the placement really cost."""
        self._finish(hold_id, {"state": SETTLED, "actual_micro": int(actual_micro)})

    def release_hold(self, hold_id: int) -> None:
        """Drop a hold whose placement never started."""
        self._finish(hold_id, {"state": RELEASED})

    def _finish(self, hold_id: int, values: dict[str, Any]) -> None:
        with self.locked() as conn:
            conn.execute(
                budget_holds.update()
                .where(budget_holds.c.id == hold_id, budget_holds.c.state == HELD)
                .values(**values, updated_at=datetime.now(UTC))
            )

    def release_run_holds(self, run_id: str) -> int:
        """Release every hold a run still has (its process died; the reaper ends its
        instances and records what they really cost). Returns how many were released."""
        with self.locked() as conn:
            return int(
                conn.execute(
                    budget_holds.update()
                    .where(budget_holds.c.run_id == run_id, budget_holds.c.state == HELD)
                    .values(state=RELEASED, updated_at=datetime.now(UTC))
                ).rowcount
            )

    def window_spend(self, now: datetime | None = None) -> dict[str, int]:
        """Micro-dollars counted against today's and this month's caps (holds included)."""
        with self.engine.connect() as conn:
            return committed_micro(conn, now or datetime.now(UTC))

    def holds(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Budget hold rows as dicts."""
        return select_rows(self.engine, budget_holds, budget_holds.c.id, run_id=run_id)
