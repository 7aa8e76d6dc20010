"""Blocks → plain settings: the one place a runner configuration meets Prefect blocks.

The runtime never loads a block; :func:`resolve_settings` does it here, once per flow run,
and hands the runtime a :class:`~prefect_cloudsched.runtime.config.SessionSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.adapters.provision.base import Provisioner
from prefect_cloudsched.core.budget import BudgetPolicy
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.runtime.config import ExecutionMode, RunnerConfig, SessionSettings
from prefect_cloudsched.runtime.spot_settings import SpotControlSettings

#: ``RunnerConfig`` options no block changes: they reach ``SessionSettings`` as given.
_AS_GIVEN = (
    "catalog_path",
    "executor_options",
    "reserved",
    "use_plan",
    "live_prices",
    "spot_retries",
    "on_deadline_risk",
)


def resolve_settings(config: RunnerConfig) -> SessionSettings:
    """Load every block ``config`` names and return plain settings for one flow run."""
    policy, budget, default_slack, spot_control = policy_parts(config.policy)
    executor, execution = executor_for(config.executor, config.execution)
    ledger = open_ledger(config.ledger, config.ledger_url)
    return SessionSettings(
        policy=policy,
        ledger=ledger,
        budget=budget,
        default_slack=default_slack,
        provisioners=provisioners_for(config.provisioners, config.pools, ledger.url),
        executor=executor,
        execution=execution,
        **{name: getattr(config, name) for name in _AS_GIVEN},
        # the runner's own setting wins over the policy block's
        spot_control=config.spot_control or spot_control,
    )


def executor_for(spec: Any, execution: ExecutionMode) -> tuple[Any, ExecutionMode]:
    """An executor from a ``CloudSchedExecutor`` block (or its saved name), else ``spec``.

    A block in ``accounting-only`` mode means: start no instance, run bodies here.
    """
    from prefect_cloudsched.adapters.execute.settings import ExecutorSettings

    is_block = hasattr(spec, "to_settings") or isinstance(spec, ExecutorSettings)
    if not is_block and not (isinstance(spec, str) and spec not in ("local", "dask")):
        return spec, execution
    from prefect_cloudsched.adapters.execute.settings import build_executor
    from prefect_cloudsched.prefect.blocks import load_executor_settings

    settings = load_executor_settings(spec)
    if settings.mode == "accounting-only":
        return "local", "accounting"
    return build_executor(settings), execution


def resolve_policy(policy: PolicyConfig | Any | str | None) -> PolicyConfig:
    """Accept a ``PolicyConfig``, a ``CloudSchedPolicy`` block, or a saved block's name."""
    return policy_parts(policy)[0]


def policy_parts(
    spec: PolicyConfig | Any | str | None,
) -> tuple[PolicyConfig, BudgetPolicy | None, timedelta | None, SpotControlSettings]:
    """Placement knobs, budget, default deadline slack and spot control of a policy (block
    loaded once)."""
    if spec is None:
        return PolicyConfig(), None, None, SpotControlSettings()
    if isinstance(spec, PolicyConfig):
        return spec, None, None, SpotControlSettings()
    if isinstance(spec, str):
        from prefect_cloudsched.prefect.blocks import CloudSchedPolicy

        spec = CloudSchedPolicy.load_named(spec)
    to_config = getattr(spec, "to_policy_config", None)
    if to_config is None:
        raise InputError(
            f"policy must be a PolicyConfig, a CloudSchedPolicy or a block name; "
            f"got {type(spec).__name__}"
        )
    to_budget = getattr(spec, "to_budget", None)
    slack = getattr(spec, "default_deadline_slack", None)
    spot = getattr(spec, "to_spot_control", None)
    return (
        to_config(),
        to_budget() if to_budget else None,
        slack() if slack else None,
        spot() if spot else SpotControlSettings(),
    )


def open_ledger(block: str | Any | None, url: str | None) -> Ledger:
    """The ledger of a ``CloudSchedLedger`` block (or its name), or of a URL."""
    if block is None:
        return Ledger(url)
    if isinstance(block, str):
        from prefect_cloudsched.prefect.blocks import CloudSchedLedger

        block = CloudSchedLedger.load_named(block)
    return block.get_ledger()


def provisioners_for(
    explicit: Mapping[str, Provisioner], pools: Sequence[str | Any], ledger_url: str | None
) -> dict[str, Provisioner]:
    """Explicit provisioners plus one per pool block; two for one cloud is an error.

    Pool provisioners record their instance rows in the run's ledger.
    """
    provisioners = dict(explicit)
    if pools:
        from prefect_cloudsched.prefect.blocks import load_pool

        for spec in pools:
            pool = load_pool(spec)
            if pool.cloud in provisioners:
                raise InputError(
                    f"two provisioners for {pool.cloud}: keep one pool per cloud "
                    "(and no explicit provisioner for a cloud that has a pool)"
                )
            provisioners[pool.cloud] = pool.build_provisioner(ledger_url=ledger_url)
    return provisioners


__all__ = [
    "executor_for",
    "open_ledger",
    "policy_parts",
    "provisioners_for",
    "resolve_policy",
    "resolve_settings",
]
