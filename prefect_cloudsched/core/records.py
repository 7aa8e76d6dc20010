"""Plain records that cross the ledger boundary. Money is integer micro-dollars.

Floats are fine for ranking offers, but totals a user reconciles with a cloud bill must not
drift, so every stored amount is an ``int`` of millionths of a US dollar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

MICRO = 1_000_000


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` with UTC attached when it is naive: every time we store is UTC, and SQLite
    hands datetimes back without their zone."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def to_micro(usd: float | Decimal) -> int:
    """Dollars → integer micro-dollars (half-even rounding, as Decimal does)."""
    return int((Decimal(str(usd)) * MICRO).to_integral_value())


def to_cents(usd: float) -> int:
    """Dollars → whole cents, through integer micro-dollars (half up), once per figure."""
    return (to_micro(usd) + 5_000) // 10_000


def to_usd(micro: int) -> Decimal:
    """Integer micro-dollars → exact ``Decimal`` dollars."""
    return Decimal(micro) / MICRO


#: Where reserved capacity comes from: what the cloud reports we own (AWS reserved instances /
#: capacity reservations, GCP commitments), what the user declared in a block or argument,
#: or what ``plan apply --yes`` bought. A draft plan is none of these.
RESERVATION_OWNED, RESERVATION_DECLARED, RESERVATION_BOUGHT_PLAN = "owned", "declared", "plan"
RESERVATION_SOURCES = (RESERVATION_OWNED, RESERVATION_DECLARED, RESERVATION_BOUGHT_PLAN)
#: ``state`` of a ledger row the reaper wrote for an orphaned instance it ended.
REAPED_STATE = "reaped"
#: Key of a reaped row's ``decision_json``: how many task rows were charged on the orphan
#: before (0: the attempt that launched it died first, and the row stands for that attempt).
REAPED_AFTER_ROWS = "reaped_after_rows"
#: ``state`` and ``option`` of the row a spot-controlled task's move writes: its checkpoint
#: crossed regions and the transfer is billed (no instance, no runtime, baseline 0).
TRANSFER_STATE, TRANSFER_OPTION = "transfer", "egress"


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """One task placement as the ledger stores it (one row per task run attempt chain)."""

    flow_run_id: str
    flow_name: str
    task_run_id: str
    task_name: str
    cloud: str
    region: str
    zone: str | None
    instance_type: str
    option: str
    offer_key: str
    gpu_type: str | None
    gpus: int
    price_micro_per_hour: int
    started_at: datetime
    ended_at: datetime
    runtime_s: float
    cost_micro: int
    baseline_micro: int
    interruptions: int = 0
    wasted_micro: int = 0
    state: str = "completed"
    instance_id: str | None = None
    explanation: str = ""
    decision_json: str = "{}"
    #: Where reserved capacity came from (``RESERVATION_SOURCES``); ``None`` when not reserved.
    reservation_source: str | None = None
    #: The shared budget hold (ledger ``budget_holds``) this row settled, if any.
    budget_hold_id: int | None = None
    #: The decision knew the deadline could not be met when it placed the task.
    deadline_at_risk: bool = False
    id: int | None = field(default=None, compare=False)

    @property
    def day(self) -> str:
        """UTC calendar day the task started (for ``--group-by day``)."""
        return self.started_at.date().isoformat()
