"""The runner's configuration, typed and checked once, and what one flow run is built from.

:class:`RunnerConfig` is what a user writes (``CloudSchedTaskRunner(...)`` keyword arguments:
values, block objects or saved block names). The Prefect layer turns it into
:class:`SessionSettings` — plain objects, every block loaded — and the runtime builds a
:class:`~prefect_cloudsched.runtime.session.Session` from those, so nothing below the
Prefect layer loads a block or imports Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from prefect_cloudsched.adapters.reservations import check_declared
from prefect_cloudsched.core.budget import BudgetPolicy
from prefect_cloudsched.core.catalog import load_catalog
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.runtime.spot_settings import SpotControlSettings

LabelMode = Literal["declared", "all", "none"]
DeadlineRisk = Literal["warn", "fail"]
#: ``"auto"``: run bodies on the instances when provisioners are configured, else locally.
ExecutionMode = Literal["auto", "local", "remote", "accounting"]


@dataclass(frozen=True)
class RunnerConfig:
    """Every option of ``CloudSchedTaskRunner``; see its docstring for each one's meaning.

    Raises:
        InputError: an option is invalid (one line naming the option and the fix).
    """

    max_workers: int | None = None
    policy: PolicyConfig | Any | str | None = None
    catalog_path: str | None = None
    ledger_url: str | None = None
    reserved: Mapping[str, int] = field(default_factory=dict)
    use_plan: bool = True
    spot_retries: int = 2
    provisioners: Mapping[str, Any] = field(default_factory=dict)
    executor: Any | str | None = None
    executor_options: Mapping[str, Any] = field(default_factory=dict)
    label_task_runs: LabelMode | bool = "none"
    live_prices: bool = True
    pack_maps: bool = True
    pools: Sequence[str | Any] = ()
    ledger: str | Any | None = None
    on_deadline_risk: DeadlineRisk = "warn"
    execution: ExecutionMode = "auto"
    spot_control: SpotControlSettings | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.max_workers is not None and (
            isinstance(self.max_workers, bool) or self.max_workers < 1
        ):
            raise InputError(f"max_workers must be a whole number >= 1, got {self.max_workers}")
        if isinstance(self.spot_retries, bool) or self.spot_retries < 0:
            raise InputError(f"spot_retries must be a whole number >= 0, got {self.spot_retries}")
        bad = {
            k: v
            for k, v in dict(self.reserved).items()
            if isinstance(v, bool) or not isinstance(v, int) or v < 0
        }
        if bad:
            raise InputError(f"reserved counts must be whole numbers >= 0: {bad}")
        # each key against the catalog a run would load now; a catalog_path missing here (it
        # may exist only where the flow runs) is checked, with the keys, when the session opens
        if self.reserved and (self.catalog_path is None or Path(self.catalog_path).is_file()):
            check_declared(self.reserved, load_catalog(self.catalog_path))
        if self.ledger is not None and self.ledger_url is not None:
            raise InputError("give either ledger (a block) or ledger_url, not both")
        if isinstance(self.pools, str) or any(
            not isinstance(p, str) and not hasattr(p, "build_provisioner") for p in self.pools
        ):
            raise InputError(
                f"pools must be a list of pool block names or AwsComputePool/GcpComputePool "
                f"blocks, got {self.pools!r}"
            )
        if self.on_deadline_risk not in ("warn", "fail"):
            raise InputError(
                f'on_deadline_risk must be "warn" or "fail", got {self.on_deadline_risk!r}'
            )
        if self.execution not in ("auto", "local", "remote", "accounting"):
            raise InputError(
                'execution must be "auto", "local", "remote" or "accounting", '
                f"got {self.execution!r}"
            )
        if self.executor_options and self.executor != "dask":
            raise InputError('executor_options apply only to executor="dask"')
        if isinstance(self.executor, str) and not self.executor.strip():
            raise InputError(
                'executor must be "local", "dask", a CloudSchedExecutor block name or an '
                "Executor; got an empty string"
            )
        # frozen: normalise through object.__setattr__ once, here
        object.__setattr__(self, "label_task_runs", label_mode(self.label_task_runs))
        object.__setattr__(self, "reserved", dict(self.reserved))
        object.__setattr__(self, "provisioners", dict(self.provisioners))
        object.__setattr__(self, "executor_options", dict(self.executor_options))
        object.__setattr__(self, "pools", tuple(self.pools))
        if self.spot_control is not None:  # None: the policy block's (or the defaults)
            object.__setattr__(self, "spot_control", SpotControlSettings.of(self.spot_control))

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this configuration."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def label_mode(value: bool | str) -> LabelMode:
    """``True``/``False`` are kept for old configurations: they mean "all"/"none"."""
    if isinstance(value, bool):
        return "all" if value else "none"
    if value not in ("declared", "all", "none"):
        raise InputError(
            f'label_task_runs must be "declared", "all" or "none" (or a bool), got {value!r}'
        )
    return value  # type: ignore[return-value]


@dataclass
class SessionSettings:
    """One flow run's inputs with every block resolved: what a ``Session`` is built from."""

    policy: PolicyConfig
    ledger: Any
    catalog_path: str | None = None
    budget: BudgetPolicy | None = None
    default_slack: timedelta | None = None
    provisioners: Mapping[str, Any] = field(default_factory=dict)
    executor: Any | str | None = None
    executor_options: Mapping[str, Any] = field(default_factory=dict)
    reserved: Mapping[str, int] = field(default_factory=dict)
    use_plan: bool = True
    live_prices: bool = True
    spot_retries: int = 2
    on_deadline_risk: DeadlineRisk = "warn"
    execution: ExecutionMode = "auto"
    spot_control: SpotControlSettings = field(default_factory=SpotControlSettings)


__all__ = [
    "DeadlineRisk",
    "ExecutionMode",
    "LabelMode",
    "RunnerConfig",
    "SessionSettings",
    "label_mode",
]
