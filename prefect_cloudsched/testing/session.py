"""A runtime ``Session`` for tests that drive the runtime without a Prefect flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect_cloudsched.adapters.execute.base import LocalExecutor
from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.core.catalog import load_catalog
from prefect_cloudsched.core.policy import PlacementState, PolicyConfig
from prefect_cloudsched.runtime.session import Session


def runtime_session(ledger_dir: Path, **overrides: Any) -> Session:
    """A session on the shipped catalog, AWS only, with a fresh SQLite ledger in
    ``ledger_dir``, no provisioner and local execution; ``overrides`` replace any of these
    (or set other ``Session`` options)."""
    options: dict[str, Any] = {
        "catalog": load_catalog(),
        "policy": PolicyConfig(allowed_clouds=frozenset({"aws"})),
        "ledger": Ledger(f"sqlite:///{ledger_dir / 'l.db'}"),
        "state": PlacementState(),
        "spot_retries": 2,
        "provisioners": {},
        "executor": LocalExecutor(),
    }
    options.update(overrides)
    return Session(**options)
