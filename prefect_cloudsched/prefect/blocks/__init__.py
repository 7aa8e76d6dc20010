"""Prefect blocks: the policy, the compute pools, the executor and the ledger, editable in the UI.

This package is the ``prefect.collections`` entry point, so a Prefect server started in an
environment where the package is installed lists the blocks without a manual
``prefect block register``. The runner takes block names or instances::

    CloudSchedTaskRunner(policy="prod", pools=["aws-main", "gcp-main"], ledger="team")

Blocks map onto the plain core objects (``PolicyConfig``, ``BudgetPolicy``, the
provisioners' and executor's settings dataclasses, ``Ledger``) so the core never imports
Prefect. One module per block family: ``policy``, ``pools``, ``executor``, ``ledger``.
"""

from __future__ import annotations

from prefect_cloudsched.prefect.blocks._common import (
    DOCS_URL,
    LOGO_URL,
    MissingBlockError,
    SpotBand,
)
from prefect_cloudsched.prefect.blocks.executor import CloudSchedExecutor, load_executor_settings
from prefect_cloudsched.prefect.blocks.ledger import CloudSchedLedger
from prefect_cloudsched.prefect.blocks.policy import CloudSchedPolicy
from prefect_cloudsched.prefect.blocks.pools import (
    POOL_BLOCKS,
    AwsComputePool,
    GcpComputePool,
    load_pool,
)

__all__ = [
    "DOCS_URL",
    "LOGO_URL",
    "POOL_BLOCKS",
    "AwsComputePool",
    "CloudSchedExecutor",
    "CloudSchedLedger",
    "CloudSchedPolicy",
    "GcpComputePool",
    "MissingBlockError",
    "SpotBand",
    "load_executor_settings",
    "load_pool",
]
