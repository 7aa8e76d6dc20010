"""The placement policy's knobs, apart from ``decide()`` so the shared filter can read them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


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
    """

    allowed_clouds: frozenset[str] | None = None
    allowed_regions: frozenset[str] | None = None
    allowed_gpu_types: frozenset[str] | None = None
    max_spot_band: str | None = None
    change_over: timedelta = timedelta(minutes=3)
    reserved_first: bool = True
    max_usd_per_hour: float | None = None


DEFAULT_POLICY = PolicyConfig()

__all__ = ["DEFAULT_POLICY", "PolicyConfig"]
