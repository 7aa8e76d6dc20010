"""``any_ledger_url``: the same ledger test on SQLite and on a real PostgreSQL server.

Import the fixture into a test module (``from ledger_backends import any_ledger_url``). The
PostgreSQL case uses ``$CLOUDSCHED_TEST_POSTGRES_URL`` (``.ci/run`` exports it) or starts the
server with ``scripts/postgres.sh``; it is skipped, with the reason printed, only when no
server can be started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_cloudsched.testing.postgres import (
    PostgresUnavailable,
    drop_database,
    fresh_database,
    server_url,
)

_UNAVAILABLE: list[str] = []


def postgres_database() -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards (skips when none starts)."""
    if _UNAVAILABLE:
        pytest.skip(f"PostgreSQL unavailable: {_UNAVAILABLE[0]}")
    try:
        url = fresh_database(server_url())
    except PostgresUnavailable as err:
        _UNAVAILABLE.append(str(err))
        pytest.skip(f"PostgreSQL unavailable: {err}")
    yield url
    drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        yield from postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL test server."""
    yield from postgres_database()
