"""Reservation truth: only capacity we really hold counts, and each use says where it came from.

Three sources, and nothing else, make reserved capacity a placement may use for free:

- ``owned``: what the clouds report we own (AWS reserved instances / capacity reservations,
  GCP commitments), read by the provisioners' ``owned_reservations()``;
- ``declared``: what the user declared (the runner's ``reserved=`` or a pool block);
- ``plan``: the reservations of the newest plan ``plan apply --yes`` *bought*
  (``Ledger.bought_plan()``). A saved draft plan is none of these and changes no placement.

:class:`HeldReservations` keeps the count per capacity key and per source; a run takes a unit
when it places a task on reserved capacity (``take``) and learns which source paid for it —
the value the ledger stores in ``PlacementRecord.reservation_source`` — and gives it back
when the task ends.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from prefect_cloudsched.core.records import (
    RESERVATION_BOUGHT_PLAN,
    RESERVATION_DECLARED,
    RESERVATION_OWNED,
    RESERVATION_SOURCES,
)


def plan_reservations(plan: Mapping[str, Any] | None) -> dict[str, int]:
    """``{capacity_key: count}`` of a stored plan's ``reserved`` items (``{}`` for none)."""
    reserved: dict[str, int] = {}
    for item in (plan or {}).get("reserved", []):
        key, count = item.get("capacity_key"), int(item.get("count", 0))
        if key and count > 0:
            reserved[key] = reserved.get(key, 0) + count
    return reserved


class HeldReservations:
    """Reserved capacity by key and source; thread-safe ``take`` / ``give_back``.

    Args:
        by_source: ``{source: {capacity_key: count}}`` with sources from
            ``RESERVATION_SOURCES``. Units are taken owned first, then declared, then the
            bought plan (the order a bill would show them).
    """

    def __init__(self, by_source: Mapping[str, Mapping[str, int]]) -> None:
        unknown = set(by_source) - set(RESERVATION_SOURCES)
        if unknown:
            raise ValueError(f"unknown reservation source(s) {sorted(unknown)}")
        self._free = {
            source: {k: int(n) for k, n in by_source.get(source, {}).items() if int(n) > 0}
            for source in RESERVATION_SOURCES
        }
        self._lock = threading.Lock()

    @property
    def counts(self) -> dict[str, int]:
        """Free units per capacity key, all sources together (``PlacementState.reserved_free``)."""
        with self._lock:
            total: dict[str, int] = {}
            for keys in self._free.values():
                for key, count in keys.items():
                    total[key] = total.get(key, 0) + count
            return {k: n for k, n in total.items() if n > 0}

    def sources(self, capacity_key: str) -> dict[str, int]:
        """Free units of one key per source (for the decision's explanation)."""
        with self._lock:
            return {
                source: keys[capacity_key]
                for source, keys in self._free.items()
                if keys.get(capacity_key, 0) > 0
            }

    def take(self, capacity_key: str) -> str | None:
        """Take one free unit; returns its source, ``None`` when none is free."""
        with self._lock:
            for source in RESERVATION_SOURCES:
                keys = self._free[source]
                if keys.get(capacity_key, 0) > 0:
                    keys[capacity_key] -= 1
                    return source
        return None

    def give_back(self, capacity_key: str, source: str) -> None:
        """Return a unit taken with :meth:`take`."""
        with self._lock:
            keys = self._free[source]
            keys[capacity_key] = keys.get(capacity_key, 0) + 1


def held_reservations(
    *,
    owned: Mapping[str, int],
    declared: Mapping[str, int],
    ledger: Any | None = None,
    use_plan: bool = True,
) -> HeldReservations:
    """What a run may count on: owned + declared + the newest *bought* plan (never a draft)."""
    bought = plan_reservations(ledger.bought_plan()) if (ledger is not None and use_plan) else {}
    return HeldReservations(
        {
            RESERVATION_OWNED: owned,
            RESERVATION_DECLARED: declared,
            RESERVATION_BOUGHT_PLAN: bought,
        }
    )
