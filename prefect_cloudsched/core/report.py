"""Cost report aggregation, shared by the CLI and the Prefect artifacts. Pure.

Sums are integer micro-dollars, so a report's total equals the sum of its rows to the cent.
Money is counted as :mod:`prefect_cloudsched.core.accounting` says, and every row dearer than
its on-demand baseline is counted under the reason that explains it (the ``why`` column).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from prefect_cloudsched.core.accounting import REASONS, dearer_reasons, decision_details
from prefect_cloudsched.core.instance_time import OVERHEAD_STATE
from prefect_cloudsched.core.records import (
    REAPED_AFTER_ROWS,
    REAPED_STATE,
    TRANSFER_STATE,
    PlacementRecord,
    to_usd,
)

#: ``state`` of ledger rows that are not task placement attempts: an instance's boot and idle
#: time, and a checkpoint's cross-region transfer. Their money counts in every total; the
#: ``tasks`` column does not count them. (The reaper's row for an orphaned instance counts when
#: no task row was charged on it: the attempt that launched it died before writing one. After
#: task rows, it is the instance's unpaid time, like a boot-and-idle row.)
NOT_ATTEMPTS = frozenset({OVERHEAD_STATE, TRANSFER_STATE})

#: Six places: the ledger's whole micro-dollars, written out in full.
MICRO_PLACE = Decimal("0.000001")


def is_attempt(record: PlacementRecord) -> bool:
    """Whether ``record`` is a task placement attempt (what the ``tasks`` column counts)."""
    if record.state == REAPED_STATE:
        return not decision_details(record).get(REAPED_AFTER_ROWS)
    return record.state not in NOT_ATTEMPTS


GroupBy = Literal["flow", "task", "cloud", "region", "option", "instance", "day"]
GROUP_KEYS: dict[str, Callable[[PlacementRecord], str]] = {
    "flow": lambda r: r.flow_name,
    "task": lambda r: r.task_name,
    "cloud": lambda r: r.cloud,
    "region": lambda r: f"{r.cloud}/{r.region}",
    "option": lambda r: r.option,
    "instance": lambda r: f"{r.cloud}/{r.instance_type}",
    "day": lambda r: r.day,
}


@dataclass(frozen=True, slots=True)
class ReportRow:
    """Totals of one group."""

    group: str
    #: Task placement attempts (instance boot/idle and checkpoint-transfer rows are not
    #: counted; their money is).
    tasks: int
    runtime_s: float
    spend_micro: int
    baseline_micro: int
    interruptions: int
    wasted_micro: int
    #: Rows dearer than their baseline, counted per reason (a row may have several).
    dearer: tuple[tuple[str, int], ...] = ()
    #: How many rows cost more than their on-demand baseline.
    dearer_rows: int = 0

    @property
    def why(self) -> str:
        """``2 interrupted, 1 fell back``: why rows cost more than on-demand ("" if none)."""
        return ", ".join(f"{n} {reason}" for reason, n in self.dearer)

    @property
    def spend(self) -> Decimal:
        """Spend in dollars."""
        return to_usd(self.spend_micro)

    @property
    def baseline(self) -> Decimal:
        """Plain on-demand cost in dollars."""
        return to_usd(self.baseline_micro)

    @property
    def savings(self) -> Decimal:
        """Baseline minus spend, dollars."""
        return self.baseline - self.spend

    @property
    def savings_pct(self) -> float | None:
        """Saving as a share of the baseline (None when the baseline is 0)."""
        if not self.baseline_micro:
            return None
        return 100.0 * (self.baseline_micro - self.spend_micro) / self.baseline_micro

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (dollars as strings keep exactness)."""
        pct = self.savings_pct
        return {
            "group": self.group,
            "tasks": self.tasks,
            "runtime_s": round(self.runtime_s, 3),
            "spend_usd": _six_places(self.spend),
            "ondemand_baseline_usd": _six_places(self.baseline),
            "savings_usd": _six_places(self.savings),
            "savings_pct": None if pct is None else round(pct, 2),
            "interruptions": self.interruptions,
            "wasted_usd": _six_places(to_usd(self.wasted_micro)),
            "dearer_rows": self.dearer_rows,
            "why": dict(self.dearer),
        }


@dataclass(frozen=True, slots=True)
class CostReport:
    """Rows per group plus the grand total."""

    group_by: str
    rows: tuple[ReportRow, ...]
    total: ReportRow

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return {
            "group_by": self.group_by,
            "rows": [r.as_dict() for r in self.rows],
            "total": self.total.as_dict(),
        }


def _sum(group: str, records: list[PlacementRecord]) -> ReportRow:
    counts: dict[str, int] = {}
    dearer_rows = 0
    for record in records:
        reasons = dearer_reasons(record)
        dearer_rows += bool(reasons)
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return ReportRow(
        group=group,
        tasks=sum(1 for r in records if is_attempt(r)),
        runtime_s=sum(r.runtime_s for r in records),
        spend_micro=sum(r.cost_micro for r in records),
        baseline_micro=sum(r.baseline_micro for r in records),
        interruptions=sum(r.interruptions for r in records),
        wasted_micro=sum(r.wasted_micro for r in records),
        dearer=tuple((reason, counts[reason]) for reason in REASONS if reason in counts),
        dearer_rows=dearer_rows,
    )


def build_report(records: Iterable[PlacementRecord], group_by: str = "flow") -> CostReport:
    """Aggregate placement records by ``group_by`` (flow|task|cloud|region|option|instance|day)."""
    if group_by not in GROUP_KEYS:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_KEYS)}; got {group_by!r}")
    key = GROUP_KEYS[group_by]
    groups: dict[str, list[PlacementRecord]] = {}
    materialised = list(records)
    for record in materialised:
        groups.setdefault(key(record), []).append(record)
    rows = tuple(_sum(name, groups[name]) for name in sorted(groups))
    return CostReport(group_by=group_by, rows=rows, total=_sum("TOTAL", materialised))


def _six_places(value: Decimal) -> str:
    """Exact dollars always written with six places ("0.000000", "2.500000"), so that JSON
    and CSV readers see one shape; the ledger counts whole micro-dollars, so nothing rounds."""
    return str(value.quantize(MICRO_PLACE))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def money(value: Decimal) -> str:
    # Six decimals: short demo tasks cost fractions of a cent, and rounding them to zero
    # would hide exactly the savings the report exists to show.
    amount = value.quantize(MICRO_PLACE)
    return f"-${-amount}" if amount < 0 else f"${abs(amount)}"  # abs: no "$-0.000000"


#: Short headers: a task-grouped table fits a 100-column terminal without wrapping.
COLUMNS = (
    "tasks",
    "runtime",
    "spend",
    "on-demand",
    "saved",
    "saved %",
    "interrupted",
    "why dearer",
)


def _cells(row: ReportRow) -> list[str]:
    return [
        str(row.tasks),
        f"{row.runtime_s:.1f}s",
        money(row.spend),
        money(row.baseline),
        money(row.savings),
        _pct(row.savings_pct),
        str(row.interruptions),
        row.why or "—",
    ]


def render_markdown(report: CostReport) -> str:
    """GitHub-flavoured Markdown table (also used for the Prefect markdown artifact)."""
    header = [report.group_by, *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in (*report.rows, report.total):
        name = f"**{row.group}**" if row is report.total else row.group
        lines.append("| " + " | ".join([name, *_cells(row)]) + " |")
    return "\n".join(lines) + "\n"


def render_csv(report: CostReport) -> str:
    """CSV with one line per group and a TOTAL line."""
    buffer = io.StringIO()
    rows = [{**r.as_dict(), "why": r.why} for r in (*report.rows, report.total)]
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def render_json(report: CostReport) -> str:
    """Pretty JSON."""
    return json.dumps(report.as_dict(), indent=2)


def render_rich(report: CostReport, title: str = "prefect-cloudsched cost report") -> Any:
    """A ``rich.table.Table`` (imported lazily: only the CLI needs rich)."""
    from rich.table import Table

    table = Table(title=title, show_footer=False, show_edge=False, pad_edge=False)
    table.add_column(report.group_by, style="bold", overflow="fold", min_width=10)
    for name in COLUMNS[:-1]:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column(COLUMNS[-1], overflow="fold")
    for row in report.rows:
        table.add_row(row.group, *_cells(row))
    table.add_section()
    table.add_row("TOTAL", *_cells(report.total), style="bold")
    return table
