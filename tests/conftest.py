"""Test isolation: no network, no writes to ~/.prefect or ~/.prefect-cloudsched.

Environment is set at import time — before any test module imports Prefect — so every
Prefect setting resolves to a throw-away home. The Prefect test harness (a local API server
subprocess, ~8 s to start) is started at most once per session, only for tests that ask for
the ``prefect_harness`` fixture.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="cloudsched-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_CLOUDSCHED_HOME"] = str(_SESSION_HOME / "cloudsched")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_CLOUDSCHED_LEDGER_URL", None)
for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_key, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

# Fixtures running one ledger test on SQLite and on a real PostgreSQL server.
from ledger_backends import any_ledger_url, postgres_url  # noqa: E402, F401


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect API server for the whole session (tests marked ``harness`` use it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def fake_gcp_server() -> Iterator[Any]:
    """One fake GCE server per test module (the client import, ~0.9 s, is paid once anyway)."""
    from prefect_cloudsched.testing.gcp_server import FakeGcpCompute

    with FakeGcpCompute() as fake:
        yield fake


@pytest.fixture
def fake_gcp(fake_gcp_server: Any) -> Any:
    """The module's fake GCE, emptied for this test."""
    fake_gcp_server.state.reset()
    return fake_gcp_server


@pytest.fixture
def ledger_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite ledger for one test, also exported so runners pick it up."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("PREFECT_CLOUDSCHED_LEDGER_URL", url)
    return url
