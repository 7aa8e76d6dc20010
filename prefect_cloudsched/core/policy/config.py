"""The placement policy's knobs, apart from ``decide()`` so the shared filter can read them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from prefect_cloudsched.errors import InputError

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


DEFAULT_POLICY = PolicyConfig()

__all__ = ["DEFAULT_POLICY", "PACK_MIN_SAVING_PCT", "PACK_MIN_SAVING_USD", "PolicyConfig"]
