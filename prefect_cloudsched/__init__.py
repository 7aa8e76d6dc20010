"""prefect-cloudsched: cost-aware placement of Prefect tasks on AWS and GCP.

The public API is re-exported lazily (PEP 562) so ``prefect-cloudsched --help`` and pure
imports such as ``prefect_cloudsched.core.needs`` do not pay for importing Prefect.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "CloudSchedTaskRunner": "prefect_cloudsched.prefect.runner",
    "requires": "prefect_cloudsched.core.needs",
    "override": "prefect_cloudsched.core.needs",
    "TaskNeeds": "prefect_cloudsched.core.needs",
    "Priority": "prefect_cloudsched.core.needs",
    "PolicyConfig": "prefect_cloudsched.core.policy",
    "decide": "prefect_cloudsched.core.policy",
    "load_catalog": "prefect_cloudsched.core.catalog",
    "Ledger": "prefect_cloudsched.adapters.ledger",
    "SpotInterrupted": "prefect_cloudsched.errors",
    "NoFeasibleOffer": "prefect_cloudsched.errors",
    "NeedsError": "prefect_cloudsched.errors",
    "CloudSchedPolicy": "prefect_cloudsched.prefect.blocks",
    "AwsComputePool": "prefect_cloudsched.prefect.blocks",
    "GcpComputePool": "prefect_cloudsched.prefect.blocks",
    "CloudSchedLedger": "prefect_cloudsched.prefect.blocks",
    "CloudSchedExecutor": "prefect_cloudsched.prefect.blocks",
    "checkpoint": "prefect_cloudsched.prefect.checkpoint",
    "SpotControlSettings": "prefect_cloudsched.runtime.spot_settings",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched.adapters.ledger import Ledger  # noqa: F401
    from prefect_cloudsched.core.catalog import load_catalog  # noqa: F401
    from prefect_cloudsched.core.needs import Priority, TaskNeeds, override, requires  # noqa: F401
    from prefect_cloudsched.core.policy import PolicyConfig, decide  # noqa: F401
    from prefect_cloudsched.errors import NeedsError, NoFeasibleOffer, SpotInterrupted  # noqa: F401
    from prefect_cloudsched.prefect import checkpoint  # noqa: F401
    from prefect_cloudsched.prefect.runner import CloudSchedTaskRunner  # noqa: F401
    from prefect_cloudsched.runtime.spot_settings import SpotControlSettings  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_cloudsched' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module.endswith(f".{name}") else getattr(imported, name)
    globals()[name] = value
    return value
