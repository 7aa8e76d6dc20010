"""The ledger: every placement, interruption, instance and plan, in one SQL database.

SQLite under ``$PREFECT_CLOUDSCHED_HOME`` (default ``~/.prefect-cloudsched``) by default, in
WAL mode so the CLI can read while a flow writes; any SQLAlchemy URL (PostgreSQL for a team)
through ``PREFECT_CLOUDSCHED_LEDGER_URL`` or the ``url`` argument — no code change.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prefect_cloudsched.core.records import PlacementRecord
from prefect_cloudsched.errors import LedgerError

SCHEMA_VERSION = 1
HOME_ENV = "PREFECT_CLOUDSCHED_HOME"
URL_ENV = "PREFECT_CLOUDSCHED_LEDGER_URL"

metadata = sa.MetaData()

meta_table = sa.Table(
    "cloudsched_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

placements = sa.Table(
    "placements",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow_run_id", sa.String(64), nullable=False, index=True),
    sa.Column("flow_name", sa.String(255), nullable=False, index=True),
    sa.Column("task_run_id", sa.String(64), nullable=False),
    sa.Column("task_name", sa.String(255), nullable=False),
    sa.Column("cloud", sa.String(16), nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("zone", sa.String(64)),
    sa.Column("instance_type", sa.String(64), nullable=False),
    sa.Column("option", sa.String(16), nullable=False),
    sa.Column("offer_key", sa.String(160), nullable=False),
    sa.Column("gpu_type", sa.String(32)),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("price_micro_per_hour", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("runtime_s", sa.Float, nullable=False),
    sa.Column("cost_micro", sa.BigInteger, nullable=False),
    sa.Column("baseline_micro", sa.BigInteger, nullable=False),
    sa.Column("interruptions", sa.Integer, nullable=False, default=0),
    sa.Column("wasted_micro", sa.BigInteger, nullable=False, default=0),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("instance_id", sa.String(128)),
    sa.Column("explanation", sa.Text, nullable=False),
    sa.Column("decision_json", sa.Text, nullable=False),
)

interruptions = sa.Table(
    "interruptions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow_run_id", sa.String(64), nullable=False, index=True),
    sa.Column("task_run_id", sa.String(64), nullable=False),
    sa.Column("task_name", sa.String(255), nullable=False),
    sa.Column("offer_key", sa.String(160), nullable=False),
    sa.Column("instance_id", sa.String(128)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("wasted_micro", sa.BigInteger, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("instance_id", sa.String(128), primary_key=True),
    sa.Column("cloud", sa.String(16), nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("zone", sa.String(64)),
    sa.Column("offer_key", sa.String(160), nullable=False),
    sa.Column("owner_id", sa.String(128), nullable=False, index=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("launched_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("terminated_at", sa.DateTime(timezone=True)),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("expected_micro", sa.BigInteger, nullable=False),
    sa.Column("ondemand_micro", sa.BigInteger, nullable=False),
    sa.Column("plan_json", sa.Text, nullable=False),
)

_PLACEMENT_FIELDS = tuple(f.name for f in fields(PlacementRecord) if f.name != "id")


def default_home() -> Path:
    """``$PREFECT_CLOUDSCHED_HOME`` or ``~/.prefect-cloudsched``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".prefect-cloudsched").expanduser()


def default_url() -> str:
    """``$PREFECT_CLOUDSCHED_LEDGER_URL`` or the SQLite file in :func:`default_home`."""
    return os.environ.get(URL_ENV) or f"sqlite:///{default_home() / 'ledger.db'}"


def _utc(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


#: Query parameters that carry credentials in common drivers' URLs (psycopg, asyncpg, pymysql).
_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "sslpassword", "key")


def redact_url(url: str) -> str:
    """The URL with its password — in the userinfo or the query string — hidden."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"
    hidden = {
        k: "redacted" for k in parsed.query if any(s in k.lower() for s in _SECRET_QUERY_KEYS)
    }
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


class Ledger:
    """Read and write the ledger. Thread-safe; one engine per ledger object."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError:
            raise LedgerError(
                f"ledger URL {redact_url(self.url)!r} is not a database URL; "
                "write e.g. sqlite:///path/ledger.db or postgresql+psycopg://user@host/db"
            ) from None
        if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
            folder = Path(parsed.database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise LedgerError(
                    f"cannot create the ledger folder {folder}: {err.strerror}; set {HOME_ENV} "
                    f"or {URL_ENV} to a writable place"
                ) from None
        try:
            self.engine: Engine = sa.create_engine(self.url, future=True)
        except ImportError as err:
            raise LedgerError(
                f"ledger URL {redact_url(self.url)!r} needs the database driver "
                f"{err.name!r}; install it (PostgreSQL: pip install 'prefect-cloudsched[postgres]')"
            ) from None
        if parsed.drivername.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

    def _migrate(self) -> None:
        try:
            with self.engine.begin() as conn:
                metadata.create_all(conn)
                found = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).scalar()
                if found is None:
                    conn.execute(
                        meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                    )
                elif int(found) > SCHEMA_VERSION:
                    raise LedgerError(
                        f"ledger {redact_url(self.url)} has schema v{found}, newer than this "
                        f"package's v{SCHEMA_VERSION}; upgrade prefect-cloudsched"
                    )
        except sa.exc.SQLAlchemyError as err:
            raise LedgerError(
                f"cannot open ledger {redact_url(self.url)}: {type(err).__name__}; "
                f"check {URL_ENV} or the ledger block"
            ) from None

    @property
    def schema_version(self) -> int:
        """Schema version stored in the database."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).scalar_one()
            )

    # ------------------------------------------------------------------ placements
    def record(self, records: Sequence[PlacementRecord] | PlacementRecord) -> None:
        """Insert placement rows (one transaction)."""
        batch = [records] if isinstance(records, PlacementRecord) else list(records)
        if not batch:
            return
        rows = [{name: getattr(r, name) for name in _PLACEMENT_FIELDS} for r in batch]
        with self.engine.begin() as conn:
            conn.execute(placements.insert(), rows)

    def placements(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        flow_name: str | None = None,
        flow_run_id: str | None = None,
    ) -> list[PlacementRecord]:
        """Placement rows, oldest first, filtered by start time and flow."""
        query = sa.select(placements).order_by(placements.c.started_at, placements.c.id)
        if since is not None:
            query = query.where(placements.c.started_at >= since)
        if until is not None:
            query = query.where(placements.c.started_at < until)
        if flow_name is not None:
            query = query.where(placements.c.flow_name == flow_name)
        if flow_run_id is not None:
            query = query.where(placements.c.flow_run_id == flow_run_id)
        with self.engine.connect() as conn:
            result = conn.execute(query).mappings().all()
        return [
            PlacementRecord(
                **{
                    **{k: row[k] for k in _PLACEMENT_FIELDS},
                    "started_at": _utc(row["started_at"]),
                    "ended_at": _utc(row["ended_at"]),
                },
                id=row["id"],
            )
            for row in result
        ]

    # ------------------------------------------------------------------ interruptions
    def record_interruption(
        self,
        *,
        flow_run_id: str,
        task_run_id: str,
        task_name: str,
        offer_key: str,
        instance_id: str | None,
        wasted_micro: int,
        detail: str = "",
        at: datetime | None = None,
    ) -> None:
        """Store one spot interruption and the spend it wasted."""
        with self.engine.begin() as conn:
            conn.execute(
                interruptions.insert().values(
                    flow_run_id=flow_run_id,
                    task_run_id=task_run_id,
                    task_name=task_name,
                    offer_key=offer_key,
                    instance_id=instance_id,
                    wasted_micro=wasted_micro,
                    detail=detail,
                    at=at or datetime.now(UTC),
                )
            )

    def interruptions(self, flow_run_id: str | None = None) -> list[dict[str, Any]]:
        """Interruption rows as dicts."""
        query = sa.select(interruptions).order_by(interruptions.c.id)
        if flow_run_id is not None:
            query = query.where(interruptions.c.flow_run_id == flow_run_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # ------------------------------------------------------------------ instances
    def upsert_instance(self, **values: Any) -> None:
        """Insert or update one instance row (keyed by ``instance_id``)."""
        with self.engine.begin() as conn:
            updated = conn.execute(
                instances.update()
                .where(instances.c.instance_id == values["instance_id"])
                .values(**{k: v for k, v in values.items() if k != "instance_id"})
            ).rowcount
            if not updated:
                conn.execute(instances.insert().values(**values))

    def instances(self, *, state: str | None = None, run_id: str | None = None) -> list[dict]:
        """Instance rows as dicts."""
        query = sa.select(instances)
        if state is not None:
            query = query.where(instances.c.state == state)
        if run_id is not None:
            query = query.where(instances.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # ------------------------------------------------------------------ plans
    def record_plan(
        self,
        *,
        name: str,
        status: str,
        expected_micro: int,
        ondemand_micro: int,
        plan: dict[str, Any],
        created_at: datetime | None = None,
    ) -> int:
        """Store a capacity plan; returns its id."""
        with self.engine.begin() as conn:
            result = conn.execute(
                plans.insert().values(
                    name=name,
                    status=status,
                    expected_micro=expected_micro,
                    ondemand_micro=ondemand_micro,
                    plan_json=json.dumps(plan, default=str),
                    created_at=created_at or datetime.now(UTC),
                )
            )
            return int(result.inserted_primary_key[0])

    def latest_plan(self) -> dict[str, Any] | None:
        """The newest stored plan (its JSON plus id, name, status, created_at), if any."""
        query = sa.select(plans).order_by(plans.c.created_at.desc(), plans.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return {
            **json.loads(row["plan_json"]),
            "id": row["id"],
            "name": row["name"],
            "status": row["status"],
            "created_at": _utc(row["created_at"]),
        }

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class BufferedWriter:
    """Writes placement rows from a background thread in small batches.

    Keeps the ledger's insert off the task's hot path (the runner-overhead benchmark counts
    every millisecond) while still flushing within ``interval`` seconds, so a killed process
    loses at most that window. ``close()`` flushes everything.
    """

    def __init__(self, ledger: Ledger, interval: float = 0.25) -> None:
        self._ledger = ledger
        self._interval = interval
        self._queue: queue.Queue[PlacementRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="cloudsched-ledger", daemon=True)
        self.errors: list[str] = []
        self._thread.start()

    def put(self, record: PlacementRecord) -> None:
        """Queue one row."""
        self._queue.put(record)

    def _drain(self, first: PlacementRecord | None) -> tuple[list[PlacementRecord], bool]:
        batch, stop = ([first] if first is not None else []), first is None
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, stop
            if item is None:
                stop = True
            else:
                batch.append(item)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._interval)
            except queue.Empty:
                continue
            batch, stop = self._drain(first)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[PlacementRecord]) -> None:
        if not batch:
            return
        try:
            self._ledger.record(batch)
        except Exception as err:  # keep the flow running; report at close
            self.errors.append(f"{len(batch)} ledger row(s) not written: {type(err).__name__}")

    def close(self) -> None:
        """Flush and stop the writer thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)


def records_as_dicts(records: Iterable[PlacementRecord]) -> Iterator[dict[str, Any]]:
    """Rows as plain dicts (for JSON/CSV)."""
    for record in records:
        yield asdict(record)
