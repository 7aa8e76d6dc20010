"""The ledger's tables and their in-place migration (add what an older database lacks).

v1: placements, interruptions, instances, plans.
v2: placements gain ``reservation_source``, ``budget_hold_id`` and ``deadline_at_risk``; plans
gain ``purchase_status`` (``draft`` until ``plan apply --yes`` bought it) and ``bought_at``;
new tables ``budget_holds`` (day/month caps shared by every process on the database) and
``journal_batches`` (journal batches already replayed, so none is inserted twice).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

SCHEMA_VERSION = 2

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
    # v2
    sa.Column("reservation_source", sa.String(16)),
    sa.Column("budget_hold_id", sa.BigInteger, index=True),
    sa.Column("deadline_at_risk", sa.Boolean, nullable=False, server_default=sa.false()),
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
    # v2: a saved plan is a draft until its reservations were bought
    sa.Column("purchase_status", sa.String(16), nullable=False, server_default="draft"),
    sa.Column("bought_at", sa.DateTime(timezone=True)),
)

budget_holds = sa.Table(
    "budget_holds",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("task_name", sa.String(255), nullable=False, server_default=""),
    sa.Column("window_day", sa.String(10), nullable=False, index=True),
    sa.Column("window_month", sa.String(7), nullable=False, index=True),
    sa.Column("amount_micro", sa.BigInteger, nullable=False),
    sa.Column("actual_micro", sa.BigInteger),
    sa.Column("state", sa.String(16), nullable=False),  # held | settled | released
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

journal_batches = sa.Table(
    "journal_batches",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=False),
)


def add_missing_columns(conn: Connection) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each column an older database lacks.

    Returns ``table.column`` names added. Only nullable columns or ones with a server default
    are ever added to an existing table, so the statement is valid on SQLite and PostgreSQL.
    """
    inspector = sa.inspect(conn)
    added = []
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"
            if column.server_default is not None:
                default = column.server_default.arg  # type: ignore[attr-defined]
                literal = (
                    default.compile(dialect=conn.dialect)
                    if isinstance(default, sa.sql.ClauseElement)
                    else f"'{default}'"
                )
                ddl += f" NOT NULL DEFAULT {literal}"
            conn.exec_driver_sql(ddl)
            added.append(f"{table.name}.{column.name}")
    return added


def select_rows(
    engine: Engine, table: sa.Table, *order_by: Any, **equal: Any
) -> list[dict[str, Any]]:
    """Rows of ``table`` as dicts, in ``order_by`` order, where each named column equals its
    value (a ``None`` value filters nothing): the ledger's listing methods all read so."""
    query = sa.select(table).order_by(*order_by)
    for column, value in equal.items():
        if value is not None:
            query = query.where(table.c[column] == value)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
