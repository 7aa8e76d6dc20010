"""Budget caps and the spot share: what a flow run may still spend. Pure, thread-safe.

Caps apply per flow run, per UTC day and per UTC calendar month. Spend counted against a cap
is what is already recorded (the ledger for day and month, read once when the run starts,
plus this run's records as they land) **plus** the expected cost of every placement still
running, so concurrent tasks cannot all slip under a cap at once. A placement is admitted
with its expected cost held; when it ends, the hold is replaced by what it really cost.

With a *hard* cap a placement that would cross it is refused (:class:`BudgetExceeded`);
with a *soft* cap it is admitted and the crossing reported once per cap and run.

Hard means hard even when a task outruns its estimate: admission holds the *worst case*
(:func:`worst_case_micro`), and while the task runs its hold is raised to what it has
accrued plus one check interval (:meth:`BudgetTracker.extend`); a raise the cap refuses means
"stop the task now", before the cap is crossed. Day and month caps shared by several
processes are held in the ledger database instead (``Ledger.hold_budget``); a tracker made
with ``shared_windows=True`` then checks only the per-run cap.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect_cloudsched.core.records import PlacementRecord, to_micro, to_usd

# BudgetExceeded lives with the other errors; re-exported here for existing imports.
from prefect_cloudsched.errors import BudgetExceeded as BudgetExceeded
from prefect_cloudsched.errors import InputError

#: Cap names as the ``CloudSchedPolicy`` block spells its fields.
RUN_CAP = "budget_per_run_usd"
DAY_CAP = "budget_per_day_usd"
MONTH_CAP = "budget_per_month_usd"


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Spending caps (USD) and how they are enforced.

    Attributes:
        per_run_usd: Cap of one flow run (``None`` = none).
        per_day_usd: Cap of all runs in one UTC day, ledger included.
        per_month_usd: Cap of all runs in one UTC calendar month, ledger included.
        hard: Refuse placements that would cross a cap (else only report the crossing).
        fallback_cheapest: Under a hard cap, first try the cheapest offer the task's hardware
            allows (spot despite deadline risk) before refusing.
        spot_max_share: Largest share of a run's admitted placements that may be spot.
        overrun_factor: Under a hard cap a placement is admitted only if its expected cost
            times this still fits (a task may run longer than estimated; one that outruns
            even this is stopped before the cap). Soft caps hold the expected cost.
    """

    per_run_usd: float | None = None
    per_day_usd: float | None = None
    per_month_usd: float | None = None
    hard: bool = True
    fallback_cheapest: bool = False
    spot_max_share: float = 1.0
    overrun_factor: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.overrun_factor) and self.overrun_factor >= 1):
            raise InputError(f"overrun_factor must be a number >= 1, got {self.overrun_factor}")
        for name in ("per_run_usd", "per_day_usd", "per_month_usd"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"{name} must be a positive amount of USD or None, got {value}")
        if not 0 <= self.spot_max_share <= 1:
            raise InputError(f"spot_max_share must be between 0 and 1, got {self.spot_max_share}")

    def caps_micro(self) -> dict[str, int]:
        """The set caps by name, in micro-dollars."""
        caps = {RUN_CAP: self.per_run_usd, DAY_CAP: self.per_day_usd, MONTH_CAP: self.per_month_usd}
        return {name: to_micro(usd) for name, usd in caps.items() if usd is not None}

    def window_caps_micro(self) -> dict[str, int]:
        """The day and month caps (what ``Ledger.hold_budget`` enforces across processes)."""
        return {k: v for k, v in self.caps_micro().items() if k in (DAY_CAP, MONTH_CAP)}

    @property
    def needs_history(self) -> bool:
        """Whether the ledger's spend of today / this month must be read at run start."""
        return self.per_day_usd is not None or self.per_month_usd is not None


@dataclass(frozen=True, slots=True)
class Overrun:
    """A cap a placement would cross: the cap and the numbers, in micro-dollars.

    Attributes:
        cap: The cap's field name (``budget_per_run_usd`` ...).
        limit_micro: The cap.
        committed_micro: Spent, plus held by other placements still running.
        held_micro: What this placement would add: at admission its hold (under a hard cap
            the worst case, more than its expected cost); while it runs, the raise of its
            hold that would let it go on.
        expected_cost_micro: The decision's expected cost (``None``: not known where the
            cap was checked, e.g. the ledger's shared day/month holds).
        hold_reason: How the hold follows from the expected cost, when it is larger: "2×
            its $0.917 expected cost, in case it runs longer than estimated" ("" if not).
        running: Found while the placement ran: it is stopped, not refused.
    """

    cap: str
    limit_micro: int
    committed_micro: int
    held_micro: int
    expected_cost_micro: int | None = None
    hold_reason: str = ""
    running: bool = False

    @property
    def total_micro(self) -> int:
        """Spend after the placement: recorded + in flight + this one's hold."""
        return self.committed_micro + self.held_micro

    def describe(self) -> str:
        """One line naming the cap and the numbers, each labelled with what it is."""
        expected = self.expected_cost_micro
        if self.running:
            this = f"{_usd(self.held_micro)} more for this task to keep running"
        elif expected is not None and expected == self.held_micro:
            this = f"{_usd(expected)} expected"
        else:
            this = f"{_usd(self.held_micro)} held for this task"
            if expected is not None:
                this += f" ({self.hold_reason or f'{_usd(expected)} expected'})"
        return (
            f"{self.cap} {_usd(self.limit_micro)} would be crossed: "
            f"{_usd(self.committed_micro)} spent or in flight + {this} = {_usd(self.total_micro)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for events and artifacts (USD as floats).

        ``total_usd = committed_usd + held_usd``; ``expected_usd`` is the decision's expected
        cost (``None`` when unknown), no longer the hold; ``stopped``: found while running.
        """
        expected = self.expected_cost_micro
        return {
            "cap": self.cap,
            "limit_usd": float(to_usd(self.limit_micro)),
            "committed_usd": float(to_usd(self.committed_micro)),
            "expected_usd": None if expected is None else float(to_usd(expected)),
            "held_usd": float(to_usd(self.held_micro)),
            "total_usd": float(to_usd(self.total_micro)),
            "stopped": self.running,
        }


def _usd(micro: int) -> str:
    """Exact to the micro-dollar, at least cents: ``$0.00``, ``$1.834``, ``$0.0021``.

    Short tasks cost fractions of a cent, and rounding the parts of a sum to cents could
    make them not add up to its total; trailing zeros past the cents are dropped.
    """
    text = f"{abs(to_usd(micro)):.6f}".rstrip("0")
    whole, cents = text.split(".")
    return f"{'-' if micro < 0 else ''}${whole}.{cents.ljust(2, '0')}"


def spend_windows(records: Iterable[PlacementRecord], now: datetime) -> tuple[int, int]:
    """Micro-dollars spent in ``now``'s UTC day and UTC month, by task start time."""
    now = now.astimezone(UTC)
    day = month = 0
    for record in records:
        started = record.started_at.astimezone(UTC)
        if (started.year, started.month) == (now.year, now.month):
            month += record.cost_micro
            if started.date() == now.date():
                day += record.cost_micro
    return day, month


def cost_micro(price_micro_per_hour: int, seconds: float) -> int:
    """What ``seconds`` at this hourly price cost, rounded *up* to a whole micro-dollar.

    Rounding up keeps a hold at least as large as what the cloud bills for the same time.
    """
    if seconds <= 0:
        return 0
    return math.ceil(price_micro_per_hour * seconds / 3600)


def worst_case_micro(
    price_micro_per_hour: int,
    est_runtime_s: float,
    *,
    overrun_factor: float = 2.0,
    check_interval_s: float = 0.0,
) -> int:
    """The hold that admits a placement: its estimate stretched by ``overrun_factor``, plus
    one budget-check interval (the time a running task may spend between two checks).

    A task that outruns even that is stopped by the running check (:meth:`BudgetTracker.extend`)
    before a hard cap is crossed; the factor only makes that rarer.
    """
    if overrun_factor < 1:
        raise InputError(f"overrun_factor must be >= 1, got {overrun_factor}")
    return cost_micro(price_micro_per_hour, est_runtime_s * overrun_factor + check_interval_s)


def month_start(now: datetime) -> datetime:
    """00:00 UTC on the first day of ``now``'s UTC month (the ledger query bound)."""
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


class BudgetTracker:
    """One flow run's view of the caps: spend, holds of running placements, spot share.

    Args:
        policy: The caps.
        spent_today_micro: Ledger spend of the current UTC day before this run.
        spent_month_micro: Ledger spend of the current UTC month before this run.
        shared_windows: The day and month caps are enforced by the ledger database for all
            processes (``Ledger.hold_budget``); this tracker checks only the per-run cap.
    """

    def __init__(
        self,
        policy: BudgetPolicy,
        *,
        spent_today_micro: int = 0,
        spent_month_micro: int = 0,
        shared_windows: bool = False,
    ) -> None:
        self.policy = policy
        caps = policy.caps_micro()
        self._caps = {k: v for k, v in caps.items() if k == RUN_CAP} if shared_windows else caps
        self._before = {RUN_CAP: 0, DAY_CAP: spent_today_micro, MONTH_CAP: spent_month_micro}
        self._spent = 0
        self._holds: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._reported: set[str] = set()
        self._placements = 0
        self._spot = 0
        self._lock = threading.Lock()

    @property
    def spent_micro(self) -> int:
        """What this run's finished placements cost."""
        return self._spent

    @property
    def in_flight_micro(self) -> int:
        """Expected cost held for placements still running."""
        with self._lock:
            return sum(self._holds.values())

    def _overruns(
        self,
        amount_micro: int,
        expected_micro: int | None = None,
        reason: str = "",
        *,
        running: bool = False,
    ) -> list[Overrun]:
        committed_run = self._spent + sum(self._holds.values())
        return [
            Overrun(
                cap,
                limit,
                self._before[cap] + committed_run,
                amount_micro,
                expected_micro,
                reason,
                running,
            )
            for cap, limit in self._caps.items()
            if self._before[cap] + committed_run + amount_micro > limit
        ]

    def check(self, expected_micro: int) -> list[Overrun]:
        """Caps a placement of this expected cost would cross now (no hold taken)."""
        with self._lock:
            return self._overruns(expected_micro, expected_micro)

    def admit(self, expected_micro: int, floor_micro: int = 0) -> tuple[int | None, list[Overrun]]:
        """Check and hold in one step.

        ``floor_micro`` is the least the placement commits to once started whatever its
        estimate (an instance we launch: its boot and the cloud's minimum).

        Returns:
            ``(hold, overruns)``: ``hold`` is ``None`` when a hard cap refused the placement;
            under soft caps the placement is held even when ``overruns`` is not empty.
        """
        if expected_micro < 0:
            raise ValueError(f"expected cost must be >= 0, got {expected_micro}")
        amount = self.hold_for(expected_micro, floor_micro)
        reason = self.hold_reason(expected_micro, floor_micro)
        with self._lock:
            overruns = self._overruns(amount, expected_micro, reason)
            if overruns and self.policy.hard:
                return None, overruns
            hold = next(self._ids)
            self._holds[hold] = amount
            return hold, overruns

    def hold_for(self, expected_micro: int, floor_micro: int = 0) -> int:
        """What admission holds: the worst case under a hard cap, else the expectation;
        never less than ``floor_micro``."""
        if not self.policy.hard:
            return max(expected_micro, floor_micro)
        return max(math.ceil(expected_micro * self.policy.overrun_factor), floor_micro)

    def hold_reason(self, expected_micro: int, floor_micro: int = 0) -> str:
        """How :meth:`hold_for` follows from the expected cost when it holds more ("" if not)."""
        held = self.hold_for(expected_micro, floor_micro)
        expected = _usd(expected_micro)
        if held <= expected_micro:
            return ""
        if held == floor_micro:
            return (
                f"its {expected} expected cost, raised to the least its instance bills once"
                " launched: boot allowance and the cloud's minimum"
            )
        factor = self.policy.overrun_factor
        return f"{factor:g}× its {expected} expected cost, in case it runs longer than estimated"

    def extend(self, hold: int, amount_micro: int) -> list[Overrun]:
        """Raise a running placement's hold to ``amount_micro`` if every hard cap allows.

        A placement that runs past its estimate must hold what it may still spend before
        it spends it; the returned overruns are empty when the hold was raised.
        """
        with self._lock:
            current = self._holds.get(hold)
            if current is None or amount_micro <= current:
                return []
            overruns = self._overruns(amount_micro - current, running=True)
            if overruns and self.policy.hard:
                return overruns
            self._holds[hold] = amount_micro
            return []

    def held(self, hold: int | None) -> int:
        """What ``hold`` currently reserves (0 for no hold)."""
        with self._lock:
            return self._holds.get(hold, 0) if hold is not None else 0

    def headroom_micro(self) -> int | None:
        """What may still be committed before the tightest cap (``None``: no caps)."""
        with self._lock:
            committed = self._spent + sum(self._holds.values())
            if not self._caps:
                return None
            return min(limit - self._before[cap] - committed for cap, limit in self._caps.items())

    def release(self, hold: int | None) -> None:
        """Drop a hold without spending (the placement never started)."""
        if hold is not None:
            with self._lock:
                self._holds.pop(hold, None)

    def settle(self, hold: int | None, actual_micro: int) -> None:
        """Replace a hold by what the placement really cost."""
        with self._lock:
            if hold is not None:
                self._holds.pop(hold, None)
            self._spent += actual_micro

    def bind_run(self, run_id: str) -> None:
        """Name the flow run this tracker belongs to (shared holds are kept under it)."""

    def shared_hold_id(self, hold: int | None) -> int | None:
        """The id of ``hold`` where other processes see it (``None``: held in memory only)."""
        return None

    def close(self) -> None:
        """Give back whatever this run still holds (the run is ending)."""

    def first_report(self, overruns: Iterable[Overrun]) -> list[Overrun]:
        """The overruns whose cap was not reported yet this run (soft caps notify once)."""
        with self._lock:
            fresh = [o for o in overruns if o.cap not in self._reported]
            self._reported.update(o.cap for o in fresh)
            return fresh

    def spot_allowed(self) -> bool:
        """Whether one more spot placement keeps the run within ``spot_max_share``."""
        with self._lock:
            # the epsilon absorbs float noise such as 0.1 * 3 = 0.30000000000000004
            return self._spot + 1 <= self.policy.spot_max_share * (self._placements + 1) + 1e-9

    def count_placement(self, *, spot: bool) -> None:
        """Count an admitted placement towards the spot share."""
        with self._lock:
            self._placements += 1
            self._spot += int(spot)
