"""A real PostgreSQL server for ledger tests and the fault suite (loopback only).

``scripts/postgres.sh`` installs Debian's ``postgresql`` if needed and starts a private
cluster; CI exports its URL as ``CLOUDSCHED_TEST_POSTGRES_URL``. Each test gets a database of
its own (created here, dropped after), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

URL_ENV = "CLOUDSCHED_TEST_POSTGRES_URL"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be reached or started; the message says why."""


def server_url(*, start: bool = True, timeout: float = 180.0) -> str:
    """The server's URL: ``$CLOUDSCHED_TEST_POSTGRES_URL``, else ``scripts/postgres.sh``.

    Raises:
        PostgresUnavailable: with the reason, when neither gives a server.
    """
    url = os.environ.get(URL_ENV)
    if url:
        return url
    if not start:
        raise PostgresUnavailable(f"{URL_ENV} is not set")
    if not SCRIPT.is_file() or shutil.which("bash") is None:
        raise PostgresUnavailable(f"{URL_ENV} is not set and {SCRIPT} is not available")
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise PostgresUnavailable(
            f"{SCRIPT.name} did not start a server in {timeout:.0f} s"
        ) from None
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PostgresUnavailable(f"{SCRIPT.name} could not start PostgreSQL: {last}")
    url = done.stdout.strip().splitlines()[-1]
    os.environ[URL_ENV] = url
    return url


def _admin(url: str):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def fresh_database(url: str, prefix: str = "ledger") -> str:
    """Create an empty database on ``url``'s server; returns its URL."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = _admin(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.SQLAlchemyError as err:
        raise PostgresUnavailable(f"cannot create a database: {type(err).__name__}") from None
    finally:
        engine.dispose()
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop a database made by :func:`fresh_database` (its sessions are ended first)."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    engine = _admin(parsed.set(database="postgres").render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    finally:
        engine.dispose()


def restart_server(timeout: float = 120.0) -> None:
    """Restart the cluster ``scripts/postgres.sh`` started (the fault suite's fault)."""
    subprocess.run(
        ["bash", str(SCRIPT), "restart"], check=True, capture_output=True, timeout=timeout
    )
