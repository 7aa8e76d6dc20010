"""prefect-cloudsched: cost-aware placement of Prefect tasks on AWS and GCP.

The public API is re-exported lazily (PEP 562) so ``prefect-cloudsched --help`` and pure
imports such as ``prefect_cloudsched.needs`` do not pay for importing Prefect.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "CloudSchedTaskRunner": "prefect_cloudsched.runner",
    "requires": "prefect_cloudsched.needs",
    "override": "prefect_cloudsched.needs",
    "TaskNeeds": "prefect_cloudsched.needs",
    "Priority": "prefect_cloudsched.needs",
    "PolicyConfig": "prefect_cloudsched.policy",
    "decide": "prefect_cloudsched.policy",
    "load_catalog": "prefect_cloudsched.catalog",
    "Ledger": "prefect_cloudsched.ledger",
    "SpotInterrupted": "prefect_cloudsched.errors",
    "NoFeasibleOffer": "prefect_cloudsched.errors",
    "NeedsError": "prefect_cloudsched.errors",
    "CloudSchedPolicy": "prefect_cloudsched.blocks",
    "AwsComputePool": "prefect_cloudsched.blocks",
    "GcpComputePool": "prefect_cloudsched.blocks",
    "CloudSchedLedger": "prefect_cloudsched.blocks",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched.catalog import load_catalog  # noqa: F401
    from prefect_cloudsched.errors import NeedsError, NoFeasibleOffer, SpotInterrupted  # noqa: F401
    from prefect_cloudsched.ledger import Ledger  # noqa: F401
    from prefect_cloudsched.needs import Priority, TaskNeeds, override, requires  # noqa: F401
    from prefect_cloudsched.policy import PolicyConfig, decide  # noqa: F401
    from prefect_cloudsched.runner import CloudSchedTaskRunner  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_cloudsched' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
