"""The ledger: every placement, interruption, instance and plan, in one SQL database.

SQLite under ``$PREFECT_CLOUDSCHED_HOME`` (default ``~/.prefect-cloudsched``) by default, in
WAL mode so the CLI can read while a flow writes; any SQLAlchemy URL (PostgreSQL for a team)
through ``PREFECT_CLOUDSCHED_LEDGER_URL`` or the ``url`` argument — no code change.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from prefect_cloudsched.adapters.ledger_holds import HoldResult, SharedBudget
from prefect_cloudsched.adapters.ledger_journal import (
    Journal,
    journal_path,
    placement_from_json,
    placement_to_json,
    sqlite_file,
)
from prefect_cloudsched.adapters.ledger_schema import (
    SCHEMA_VERSION,
    add_missing_columns,
    budget_holds,
    instances,
    interruptions,
    journal_batches,
    meta_table,
    metadata,
    placements,
    plans,
    select_rows,
)
from prefect_cloudsched.core.records import PlacementRecord, as_utc
from prefect_cloudsched.errors import LedgerError, hide_url_secrets, scrub_secrets_of

logger = logging.getLogger("prefect_cloudsched.ledger")

HOME_ENV = "PREFECT_CLOUDSCHED_HOME"
URL_ENV = "PREFECT_CLOUDSCHED_LEDGER_URL"
#: Plan purchase states: a draft never changes a placement; a bought plan is capacity we hold.
PLAN_DRAFT, PLAN_BOUGHT = "draft", "bought"
#: How long one SQLite statement waits for another writer's lock before it fails.
DEFAULT_BUSY_TIMEOUT_S = 10.0

_PLACEMENT_FIELDS = tuple(f.name for f in fields(PlacementRecord) if f.name != "id")


def default_home() -> Path:
    """``$PREFECT_CLOUDSCHED_HOME`` or ``~/.prefect-cloudsched``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".prefect-cloudsched").expanduser()


def default_url() -> str:
    """``$PREFECT_CLOUDSCHED_LEDGER_URL`` or the SQLite file in :func:`default_home`."""
    return os.environ.get(URL_ENV) or f"sqlite:///{default_home() / 'ledger.db'}"


def _driver_reason(err: Exception, url: str) -> str:
    """The database driver's own first line ("unable to open database file", "connection
    refused"), secrets hidden: the class name alone does not say what to fix."""
    detail = str(getattr(err, "orig", None) or "").strip().splitlines()
    reason = scrub_secrets_of(url, detail[0]) if detail else ""
    return f"{type(err).__name__} ({reason})" if reason else type(err).__name__


def redact_url(url: str) -> str:
    """The URL with its password — in the userinfo or the query string — hidden.

    Text-based (:func:`~prefect_cloudsched.errors.hide_url_secrets`): SQLAlchemy splits
    ``user:pa@ss@host`` at the first ``@``, which would show half of such a password.
    """
    try:
        sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"
    except ValueError:  # a bad port: parsed far enough to show, with its secrets hidden
        pass
    return hide_url_secrets(url)


def url_source(url: str | None, source: str | None) -> str:
    """Where a ledger URL came from, as a user would fix it: an option, a block or the env."""
    if source:
        return source
    return URL_ENV if url is None and os.environ.get(URL_ENV) else "the ledger URL"


def check_url(url: str, source: str) -> sa.engine.URL:
    """``url`` parsed, or one :class:`LedgerError` line naming ``source`` and the fix."""
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as err:
        reason = (
            "its port must be a number"
            if isinstance(err, ValueError) and "int()" in str(err)
            else "not a database URL"
        )
        raise LedgerError(
            f"{source} {redact_url(url)!r}: {reason}; write e.g. sqlite:///path/ledger.db "
            "or postgresql+psycopg://user@host:5432/db"
        ) from None
    return parsed


class Ledger(SharedBudget):
    """Read and write the ledger. Thread-safe; one engine per ledger object.

    Budget holds shared by every process (``hold_budget``, ``extend_hold``, ``settle_hold``,
    ``release_hold``, ``release_run_holds``, ``window_spend``) come from
    :class:`~prefect_cloudsched.adapters.ledger_holds.SharedBudget`.

    Args:
        url: SQLAlchemy URL (default :func:`default_url`).
        create: Create the database and its tables when missing (writers). ``False`` (the
            report) refuses a database that does not exist or holds no ledger, creating
            nothing, and leaves a pending journal for the next writer.
        busy_timeout_s: How long one SQLite statement waits for another writer's lock.
        source: Where ``url`` came from, named in errors so the user knows what to fix
            (``--ledger``, a block field); default: the environment variable when it
            supplied the URL, else "the ledger URL".
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        create: bool = True,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        source: str | None = None,
    ) -> None:
        self.source = url_source(url, source)
        self.url = url or default_url()
        parsed = check_url(self.url, self.source)
        self.is_sqlite = parsed.drivername.startswith("sqlite")
        on_disk = self.is_sqlite and parsed.database not in (None, "", ":memory:")
        if on_disk:
            _prepare_sqlite_file(sqlite_file(str(parsed.database)), self.url, create, self.source)
        self.journal = Journal(
            journal_path(self.url, parsed.database, self.is_sqlite, default_home())
        )
        try:
            self.engine: Engine = sa.create_engine(self.url, future=True, pool_pre_ping=True)
        except ImportError as err:
            raise LedgerError(
                f"ledger URL {redact_url(self.url)!r} needs the database driver "
                f"{err.name!r}; install it (PostgreSQL: pip install 'prefect-cloudsched[postgres]')"
            ) from None
        if self.is_sqlite:
            _sqlite_begin_on_demand(self.engine, busy_timeout_s)
        self._migrate(create)
        if create:
            self._replay_quietly()

    def _migrate(self, create: bool) -> None:
        try:
            with self.engine.begin() as conn:
                if not create and not sa.inspect(conn).has_table(placements.name):
                    raise _no_ledger(self.url, self.source)
                metadata.create_all(conn)
                found = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).scalar()
                if found is not None and int(found) > SCHEMA_VERSION:
                    raise LedgerError(
                        f"ledger {redact_url(self.url)} has schema v{found}, newer than this "
                        f"package's v{SCHEMA_VERSION}; upgrade prefect-cloudsched"
                    )
                if found is None or int(found) < SCHEMA_VERSION:
                    added = add_missing_columns(conn)
                    if added:
                        logger.info("ledger migrated to v%d: added %s", SCHEMA_VERSION, added)
                    conn.execute(meta_table.delete().where(meta_table.c.key == "schema_version"))
                    conn.execute(
                        meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                    )
        except sa.exc.SQLAlchemyError as err:
            if self.is_sqlite and "file is not a database" in str(err):
                raise _not_sqlite(self.url, self.source) from None
            raise LedgerError(
                f"cannot open ledger {redact_url(self.url)}: {_driver_reason(err, self.url)}; "
                f"check {self._fix_hint()}"
            ) from None

    def _fix_hint(self) -> str:
        """What to check when the ledger cannot be opened: its source, or where URLs come from."""
        if self.source == "the ledger URL":
            return f"{URL_ENV} or the ledger block"
        return self.source

    @property
    def schema_version(self) -> int:
        """Schema version stored in the database."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).scalar_one()
            )

    @contextmanager
    def locked(self) -> Iterator[Connection]:
        """A transaction holding the database-wide write lock (budget holds use it).

        SQLite: ``BEGIN IMMEDIATE`` (one writer at a time, readers continue under WAL).
        PostgreSQL: a transaction-scoped advisory lock, released at commit or rollback.
        """
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn.execution_options(cloudsched_immediate=True)
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
                yield conn

    # ------------------------------------------------------------------ journal
    def pending_journal_rows(self) -> int:
        """Rows in the local journal that the database has not taken yet."""
        return self.journal.pending_rows()

    def replay_journal(self) -> int:
        """Insert the journal's rows (each batch once, ever); returns how many rows."""
        return self.journal.replay(self._apply_batches)

    def _replay_quietly(self) -> None:
        try:
            replayed = self.replay_journal()
        except Exception as err:  # the database is busy or down: keep the journal for later
            logger.warning(
                "ledger journal %s not replayed yet (%s); it is kept", self.journal.path, err
            )
            return
        if replayed:
            logger.warning(
                "ledger: %d deferred row(s) replayed from %s", replayed, self.journal.path
            )

    def _apply_batches(self, batches: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            done = set(conn.execute(sa.select(journal_batches.c.batch_id)).scalars())
            for batch in batches:
                if batch["batch"] in done:
                    continue
                if batch["kind"] == "placements":
                    rows = [_placement_row(placement_from_json(r)) for r in batch["rows"]]
                    conn.execute(placements.insert(), rows)
                elif batch["kind"] == "interruptions":
                    rows = [{**r, "at": datetime.fromisoformat(r["at"])} for r in batch["rows"]]
                    conn.execute(interruptions.insert(), rows)
                else:
                    raise LedgerError(f"ledger journal batch of unknown kind {batch['kind']!r}")
                conn.execute(
                    journal_batches.insert().values(
                        batch_id=batch["batch"], replayed_at=datetime.now(UTC)
                    )
                )

    # ------------------------------------------------------------------ placements
    def record(self, records: Sequence[PlacementRecord] | PlacementRecord) -> None:
        """Insert placement rows (one transaction)."""
        batch = [records] if isinstance(records, PlacementRecord) else list(records)
        if not batch:
            return
        with self.engine.begin() as conn:
            conn.execute(placements.insert(), [_placement_row(r) for r in batch])

    def journal_placements(self, records: Sequence[PlacementRecord]) -> None:
        """Append rows to the local journal (fsync) for the next open to insert."""
        self.journal.append("placements", [placement_to_json(r) for r in records])

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
                    "started_at": as_utc(row["started_at"]),
                    "ended_at": as_utc(row["ended_at"]),
                    "deadline_at_risk": bool(row["deadline_at_risk"]),
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
        return select_rows(self.engine, interruptions, interruptions.c.id, flow_run_id=flow_run_id)

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
        return select_rows(self.engine, instances, state=state, run_id=run_id)

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
        purchase_status: str = PLAN_DRAFT,
    ) -> int:
        """Store a capacity plan (a draft unless said otherwise); returns its id.

        ``status`` is the solver's (optimal, ...); ``purchase_status`` whether its
        reservations were bought — only a bought plan is capacity placements may count on.
        """
        if purchase_status not in (PLAN_DRAFT, PLAN_BOUGHT):
            raise ValueError(f"purchase_status must be draft or bought, got {purchase_status!r}")
        now = created_at or datetime.now(UTC)
        with self.engine.begin() as conn:
            result = conn.execute(
                plans.insert().values(
                    name=name,
                    status=status,
                    expected_micro=expected_micro,
                    ondemand_micro=ondemand_micro,
                    plan_json=json.dumps(plan, default=str),
                    created_at=now,
                    purchase_status=purchase_status,
                    bought_at=now if purchase_status == PLAN_BOUGHT else None,
                )
            )
            return int(result.inserted_primary_key[0])

    def mark_plan_bought(self, plan_id: int, *, at: datetime | None = None) -> None:
        """Record that ``plan apply --yes`` bought this plan's reservations."""
        with self.engine.begin() as conn:
            updated = conn.execute(
                plans.update()
                .where(plans.c.id == plan_id)
                .values(purchase_status=PLAN_BOUGHT, bought_at=at or datetime.now(UTC))
            ).rowcount
        if not updated:
            raise LedgerError(f"the ledger has no plan {plan_id}; list them with: plan apply")

    def latest_plan(self) -> dict[str, Any] | None:
        """The newest stored plan, draft or bought (``plan apply`` shows it)."""
        return self._newest_plan(None)

    def bought_plan(self) -> dict[str, Any] | None:
        """The newest *bought* plan: the only plan whose reservations placements may use."""
        return self._newest_plan(PLAN_BOUGHT)

    def _newest_plan(self, purchase_status: str | None) -> dict[str, Any] | None:
        query = sa.select(plans).order_by(plans.c.created_at.desc(), plans.c.id.desc()).limit(1)
        if purchase_status is not None:
            query = query.where(plans.c.purchase_status == purchase_status)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return {
            **json.loads(row["plan_json"]),
            "id": row["id"],
            "name": row["name"],
            "status": row["status"],
            "purchase_status": row["purchase_status"],
            "created_at": as_utc(row["created_at"]),
            "bought_at": as_utc(row["bought_at"]),
        }

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


#: Advisory lock id of the PostgreSQL budget transaction ("CLOUDSCH" as a 64-bit integer).
_LOCK_KEY = int.from_bytes(b"CLOUDSCH", "big") & 0x7FFF_FFFF_FFFF_FFFF


def _placement_row(record: PlacementRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _PLACEMENT_FIELDS}


def _prepare_sqlite_file(path: Path, url: str, create: bool, source: str) -> None:
    if path.is_dir():
        raise LedgerError(
            f"{source} {redact_url(url)!r} names a directory, not a ledger file; "
            "add a file name, e.g. sqlite:///path/ledger.db"
        )
    if not create:
        if not path.is_file():
            raise LedgerError(
                f"no ledger at {redact_url(url)}: the file does not exist; check {source} "
                f"(default: {redact_url(default_url())})"
            )
        _check_sqlite_ledger(path, url, source)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fix = (
            f"check {source}"
            if source.startswith("--")
            else f"set {HOME_ENV} or {URL_ENV} to a writable place"
        )
        raise LedgerError(
            f"cannot create the ledger folder {path.parent}: {err.strerror}; {fix}"
        ) from None


def _check_sqlite_ledger(path: Path, url: str, source: str) -> None:
    """Refuse, read-only, a file that is not a SQLite ledger, before anything writes to it.

    The engine's first connection switches the file to WAL mode and ``create_all`` adds
    tables: a reader or a dry run pointed at another application's database must change
    neither. A file that cannot be read here is left to the engine, which says why.
    """
    import sqlite3

    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return
    try:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (placements.name,)
        ).fetchone()
    except sqlite3.DatabaseError as err:
        if "file is not a database" in str(err):
            raise _not_sqlite(url, source) from None
        return
    finally:
        conn.close()
    if found is None:
        raise _no_ledger(url, source)


def _not_sqlite(url: str, source: str) -> LedgerError:
    return LedgerError(
        f"{source} {redact_url(url)!r}: the file is not a SQLite database, so not a ledger; "
        "point it at a ledger file or a new path"
    )


def _no_ledger(url: str, source: str) -> LedgerError:
    return LedgerError(
        f"{redact_url(url)} holds no prefect-cloudsched ledger; check {source} or run a flow first"
    )


def _sqlite_begin_on_demand(engine: Engine, busy_timeout_s: float) -> None:
    """WAL, a busy timeout, and transactions begun by us: ``BEGIN IMMEDIATE`` when asked.

    pysqlite opens transactions lazily on its own; SQLAlchemy's documented recipe turns that
    off and emits ``BEGIN`` itself, which is what lets :meth:`Ledger.locked` take the write
    lock up front.
    """

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    def on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("cloudsched_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "begin", on_begin)


def records_as_dicts(records: Iterable[PlacementRecord]) -> Iterator[dict[str, Any]]:
    """Rows as plain dicts (for JSON/CSV)."""
    for record in records:
        yield asdict(record)


from prefect_cloudsched.adapters.ledger_writer import BufferedWriter  # noqa: E402

__all__ = [
    "PLAN_BOUGHT",
    "PLAN_DRAFT",
    "SCHEMA_VERSION",
    "BufferedWriter",
    "HoldResult",
    "Ledger",
    "budget_holds",
    "default_home",
    "default_url",
    "instances",
    "interruptions",
    "meta_table",
    "placements",
    "plans",
    "redact_url",
]
