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

import difflib
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from prefect_cloudsched.core.catalog import Catalog, PurchaseOption
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.core.policy.offer_filter import excluded_by
from prefect_cloudsched.core.records import (
    RESERVATION_BOUGHT_PLAN,
    RESERVATION_DECLARED,
    RESERVATION_OWNED,
    RESERVATION_SOURCES,
)
from prefect_cloudsched.errors import InputError

#: What a reserved-capacity key looks like (``Offer.capacity_key``), with a real example.
KEY_FORMAT = "cloud/region-or-zone/instance-type, e.g. 'aws/us-east-1/g5.xlarge'"


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

    def drop(self, capacity_key: str) -> None:
        """Forget every unit of a key (capacity this run cannot use, e.g. a forbidden region)."""
        with self._lock:
            for keys in self._free.values():
                keys.pop(capacity_key, None)

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


def check_declared(declared: Iterable[Any], catalog: Catalog) -> None:
    """Each declared key must be a capacity key of the price catalog.

    Raises:
        InputError: one line naming the key, what is wrong and the expected format.
    """
    known = {o.capacity_key for o in catalog.offers}
    for key in declared:
        if isinstance(key, str) and key in known:
            continue
        parts = key.split("/") if isinstance(key, str) else []
        if len(parts) != 3 or not all(p.strip() for p in parts):
            shape = parts[-1].strip() if parts else ""
            same = sorted(k for k in known if shape and k.endswith(f"/{shape}"))[:3]
            hint = f" (the catalog has {', '.join(same)})" if same else ""
            raise InputError(
                f"reserved key {key!r} is not a capacity key: write {KEY_FORMAT}{hint}"
            )
        why = _unknown(parts, catalog, known)
        raise InputError(f"reserved key {key!r} is not in the price catalog: {why}")


def _unknown(parts: list[str], catalog: Catalog, known: set[str]) -> str:
    cloud, location, shape = parts
    key = "/".join(parts)
    if cloud not in catalog.clouds:
        what = f"unknown cloud {cloud!r} (the catalog has {', '.join(catalog.clouds)})"
    elif not any(k.startswith(f"{cloud}/{location}/") for k in known):
        what = f"no {cloud} region or zone {location!r}"
    else:
        what = f"no instance type {shape!r} in {cloud} {location}"
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return f"{what}; write {KEY_FORMAT}{hint}"


def unusable_reason(capacity_key: str, catalog: Catalog, policy: PolicyConfig) -> str | None:
    """Why a placement can never take this reserved capacity, ``None`` when it can.

    The policy's limits are the offer filter's (``excluded_by``): the one ``decide()`` uses.
    """
    rows = catalog.rows_with_option(PurchaseOption.RESERVED) & np.fromiter(
        (o.capacity_key == capacity_key for o in catalog.offers), bool, len(catalog)
    )
    if not rows.any():
        return "the price catalog has no reserved offer for it"
    offer = catalog.offers[int(np.flatnonzero(rows)[0])]
    limit = excluded_by(catalog, policy, rows)
    if limit == "cloud":
        return f"the policy allows only clouds {sorted(policy.allowed_clouds or ())}"
    if limit == "region":
        return f"the policy allows only regions {sorted(policy.allowed_regions or ())}"
    if limit == "gpu_type":
        allowed = sorted(policy.allowed_gpu_types or ())
        return f"its GPU {offer.gpu_type} is not in the policy's allowed_gpu_types {allowed}"
    if limit == "price":
        return (
            f"its ${offer.usd_per_hour:.4f}/h is over the policy's max_usd_per_hour "
            f"{policy.max_usd_per_hour}"
        )
    return None
