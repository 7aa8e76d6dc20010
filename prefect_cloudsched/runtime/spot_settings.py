"""The spot controller's settings in the runner, and their defaults for a real cloud.

Kept apart from :mod:`prefect_cloudsched.runtime.spot_live` so the runner's configuration can
check them without building anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect_cloudsched.errors import InputError

#: Defaults for a real cloud: 12 min change-over, a decision at least every 5 min.
CHANGE_OVER_S = 720.0
HORIZON_S = 300.0
#: Instance checks per decision interval (``check_s = horizon_s / CHECKS_PER_DECISION``).
CHECKS_PER_DECISION = 5
#: After a reclaim is seen, how long until the attempt has ended and its retry is being
#: placed: a terminated instance's executor call fails at once; a body running here stops
#: at its next ``checkpoint.save()``, so a body that saves less often than this needs more.
END_S = 60.0
EGRESS_USD = 0.2


@dataclass(frozen=True)
class SpotControlSettings:
    """How the runner controls spot-tolerant, checkpointable tasks with a deadline.

    Args:
        change_over: Time from deciding on a new instance to its body making progress again:
            launch, boot, worker join, image pull and checkpoint restore. The deadline's
            safety net counts on it, so set it to what your tasks really take (too short a
            value can miss a deadline; too long pays on-demand earlier than needed).
        decision_interval: Longest time between two decisions while a task waits or runs.
        check_interval: How often a running spot instance is checked for a reclaim
            (``None``: a fifth of ``decision_interval``).
        end_allowance: How long an attempt may take to end, and its retry to be placed,
            after its instance's loss is seen (a body running in this process stops at its
            next ``checkpoint.save()``: save at least this often).
        egress_usd: What moving a checkpoint to another region costs, counted when the
            controller weighs a move.

    Example:
        ```python
        CloudSchedTaskRunner(spot_control=SpotControlSettings(change_over=timedelta(minutes=20)))
        ```
    """

    change_over: timedelta = timedelta(seconds=CHANGE_OVER_S)
    decision_interval: timedelta = timedelta(seconds=HORIZON_S)
    check_interval: timedelta | None = None
    end_allowance: timedelta = timedelta(seconds=END_S)
    egress_usd: float = EGRESS_USD

    def __post_init__(self) -> None:
        for name in ("change_over", "decision_interval", "check_interval", "end_allowance"):
            value = getattr(self, name)
            if value is None and name == "check_interval":
                continue
            if not isinstance(value, timedelta):
                raise InputError(f"spot_control.{name} must be a timedelta, got {value!r}")
            positive = name in ("decision_interval", "check_interval")
            if value < timedelta(0) or (positive and value == timedelta(0)):
                raise InputError(
                    f"spot_control.{name} must be {'> 0' if positive else '>= 0'}, got {value}"
                )
        if self.check_interval is not None and self.check_interval > self.decision_interval:
            raise InputError(
                "spot_control.check_interval must not exceed decision_interval "
                f"({self.check_interval} > {self.decision_interval})"
            )
        if (
            isinstance(self.egress_usd, bool)
            or not isinstance(self.egress_usd, int | float)
            or (self.egress_usd < 0)
        ):
            raise InputError(
                f"spot_control.egress_usd must be a number >= 0, got {self.egress_usd!r}"
            )

    @classmethod
    def of(cls, value: SpotControlSettings | Mapping[str, Any] | None) -> SpotControlSettings:
        """Settings from themselves, a mapping of their fields, or ``None`` (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise InputError(
                f"spot_control must be a SpotControlSettings or a mapping, got {value!r}"
            )
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(
                f"spot_control: unknown field(s) {', '.join(unknown)}; known: "
                f"{', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**value)

    def apply(self, live: Any) -> None:
        """Set the parameters of ``live`` (a ``SpotLive``; seconds on the real clock)."""
        live.change_over_s = self.change_over.total_seconds()
        live.horizon_s = self.decision_interval.total_seconds()
        live.check_s = None if self.check_interval is None else self.check_interval.total_seconds()
        live.end_s = self.end_allowance.total_seconds()
        live.egress_usd = float(self.egress_usd)


__all__ = [
    "CHANGE_OVER_S",
    "CHECKS_PER_DECISION",
    "EGRESS_USD",
    "END_S",
    "HORIZON_S",
    "SpotControlSettings",
]
