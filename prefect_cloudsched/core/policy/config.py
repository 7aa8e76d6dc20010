"""The placement policy's knobs, apart from ``decide()`` so the shared filter can read them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from prefect_cloudsched.core.catalog import BAND_ORDER
from prefect_cloudsched.core.needs import AWS_REGIONS, GCP_REGIONS
from prefect_cloudsched.errors import InputError

#: The clouds a policy may name.
CLOUDS = ("aws", "gcp")

#: Pack a ``.map()`` only when sharing saves at least this share of one-instance-each. A bin
#: lives as long as its longest member and a member that starts late or runs long keeps the
#: whole instance billed, while alone it pays only for itself; one packing class already
#: spans run-time estimates up to 25 % apart. A saving under 10 % is within that noise and
#: can turn into a loss (the first example packed for 8.7 % and reported -13 %).
PACK_MIN_SAVING_PCT = 10.0
#: ... and at least this many USD: below a cent, sharing is not worth its risk.
PACK_MIN_SAVING_USD = 0.01


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Knobs of the placement policy (the ``CloudSchedPolicy`` block maps onto this).

    Attributes:
        allowed_clouds: Only these clouds (``None`` = all).
        allowed_regions: Only these regions (``None`` = all).
        allowed_gpu_types: Only these GPU models (``None`` = all).
        max_spot_band: Worst spot interruption band accepted (``None`` = any).
        change_over: Time to get a replacement instance running after a loss.
        reserved_first: Use idle reserved capacity before anything else.
        max_usd_per_hour: Never choose an offer dearer than this.
        pack_min_saving_pct: Pack a ``.map()``'s tasks onto shared instances only when that
            saves at least this percentage of placing each alone (:data:`PACK_MIN_SAVING_PCT`).
        pack_min_saving_usd: ... and at least this many USD (:data:`PACK_MIN_SAVING_USD`).
    """

    allowed_clouds: frozenset[str] | None = None
    allowed_regions: frozenset[str] | None = None
    allowed_gpu_types: frozenset[str] | None = None
    max_spot_band: str | None = None
    change_over: timedelta = timedelta(minutes=3)
    reserved_first: bool = True
    max_usd_per_hour: float | None = None
    pack_min_saving_pct: float = PACK_MIN_SAVING_PCT
    pack_min_saving_usd: float = PACK_MIN_SAVING_USD

    def __post_init__(self) -> None:
        clouds = _names("allowed_clouds", self.allowed_clouds, "['aws']")
        _only("allowed_clouds", clouds, CLOUDS)
        regions = _names("allowed_regions", self.allowed_regions, "['us-east-1']")
        known_regions = AWS_REGIONS | GCP_REGIONS
        _only("allowed_regions", regions, known_regions, "any AWS or GCP region, e.g. us-east-1")
        gpus = _names("allowed_gpu_types", self.allowed_gpu_types, "['A10G', 'L4']")
        # frozensets: the offer filter caches its masks by this (hashable) configuration
        object.__setattr__(self, "allowed_clouds", clouds)
        object.__setattr__(self, "allowed_regions", regions)
        object.__setattr__(self, "allowed_gpu_types", gpus)
        band = self.max_spot_band
        if band is not None and (not isinstance(band, str) or band not in BAND_ORDER):
            raise InputError(
                f"max_spot_band must be one of {', '.join(BAND_ORDER)} (or None for any band);"
                f" got {band!r}"
            )
        if not isinstance(self.reserved_first, bool):
            raise InputError(f"reserved_first must be True or False; got {self.reserved_first!r}")
        cap = self.max_usd_per_hour
        if cap is not None and (
            isinstance(cap, bool)
            or not isinstance(cap, int | float)
            or not (math.isfinite(cap) and cap > 0)
        ):
            raise InputError(
                f"max_usd_per_hour must be a positive amount of USD per hour, e.g. 2.5"
                f" (or None for no cap); got {cap!r}"
            )
        change_over = self.change_over
        if not isinstance(change_over, timedelta) or change_over < timedelta(0):
            raise InputError(
                f"change_over must be a timedelta >= 0, e.g. timedelta(minutes=3);"
                f" got {change_over!r}"
            )
        pct, usd = self.pack_min_saving_pct, self.pack_min_saving_usd
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 <= pct < 100:
            raise InputError(
                f"pack_min_saving_pct must be a percentage in [0, 100), e.g. 10; got {pct!r}"
            )
        if (
            isinstance(usd, bool)
            or not isinstance(usd, int | float)
            or not (math.isfinite(usd) and usd >= 0)
        ):
            raise InputError(
                f"pack_min_saving_usd must be a finite amount of USD >= 0, e.g. 0.01; got {usd!r}"
            )

    def packing_pays(self, saving_usd: float, alone_usd: float) -> bool:
        """Does sharing instances save enough, relative and absolute, to be worth its risk?"""
        tolerance = 1e-9  # a saving equal to the threshold passes despite float rounding
        return (
            saving_usd > 0
            and saving_usd >= self.pack_min_saving_usd - tolerance
            and saving_usd >= alone_usd * self.pack_min_saving_pct / 100 - tolerance
        )


def _names(field: str, value: object, example: str) -> frozenset[str] | None:
    """``value`` as a frozenset of names (``None`` stays: no restriction); one-line errors."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, frozenset | set | list | tuple):
        raise InputError(f"{field} must be a list of names, e.g. {example}; got {value!r}")
    names = frozenset(value)
    if not names:
        raise InputError(
            f"{field} is empty, which allows nothing; leave it None for no restriction"
        )
    odd = sorted(repr(n) for n in names if not isinstance(n, str))
    if odd:
        raise InputError(f"{field} must hold names (text), e.g. {example}; got {', '.join(odd)}")
    return names


def _only(field: str, names: frozenset[str] | None, valid: object, hint: str = "") -> None:
    unknown = sorted(n for n in names or () if n not in valid)  # type: ignore[operator]
    if unknown:
        choices = hint or ", ".join(sorted(valid))  # type: ignore[call-overload]
        raise InputError(f"{field}: unknown {', '.join(map(repr, unknown))}; valid: {choices}")


DEFAULT_POLICY = PolicyConfig()

__all__ = ["CLOUDS", "DEFAULT_POLICY", "PACK_MIN_SAVING_PCT", "PACK_MIN_SAVING_USD", "PolicyConfig"]
