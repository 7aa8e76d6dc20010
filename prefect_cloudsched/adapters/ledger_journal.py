"""The ledger's local journal: rows the database would not take, kept on disk until it does.

A write that still fails after its retries is appended here — one JSON line per batch,
flushed and ``fsync``-ed before the writer lets go of it — and replayed the next time a ledger
on the same URL is opened for writing. Each batch carries an id that the replay stores in the
same transaction as its rows, so a replay interrupted half-way (or two processes replaying at
once) never inserts a row twice. Appends and replays take an exclusive ``flock`` on the file;
the file is truncated, never unlinked, so an appender waiting on the lock never writes to a
file nobody will read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from prefect_cloudsched.core.records import PlacementRecord

logger = logging.getLogger("prefect_cloudsched.ledger")

_DATETIME_FIELDS = frozenset(
    f.name for f in fields(PlacementRecord) if f.name in ("started_at", "ended_at")
)


def sqlite_file(database: str) -> Path:
    """The file behind a SQLite database name, also when written as a ``file:`` URI.

    ``sqlite:///file:/x/ledger.db?uri=true`` names ``/x/ledger.db``; taken literally it would be
    a folder called ``file:`` in the working directory.
    """
    for prefix in ("file://", "file:"):
        if database.startswith(prefix):
            database = database.removeprefix(prefix).split("?", 1)[0]
            break
    return Path(database).expanduser()


def journal_path(url: str, database: str | None, is_sqlite: bool, home: Path) -> Path:
    """Next to a SQLite file; under ``home/journal`` (named by a hash of the URL) otherwise.

    The hash keeps passwords in a PostgreSQL URL out of the file name.
    """
    if is_sqlite and database not in (None, "", ":memory:"):
        path = sqlite_file(str(database))
        return path.with_name(path.name + ".pending")
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return home / "journal" / f"{digest}.pending"


def placement_to_json(record: PlacementRecord) -> dict[str, Any]:
    """A placement as a JSON-safe dict (datetimes as ISO 8601)."""
    row = asdict(record)
    for name in _DATETIME_FIELDS:
        row[name] = row[name].isoformat()
    return row


def placement_from_json(row: dict[str, Any]) -> PlacementRecord:
    """The inverse of :func:`placement_to_json` (unknown keys from newer versions ignored)."""
    known = {f.name for f in fields(PlacementRecord)}
    values = {k: v for k, v in row.items() if k in known}
    for name in _DATETIME_FIELDS:
        values[name] = datetime.fromisoformat(values[name])
    return PlacementRecord(**values)


class Journal:
    """An append-only file of batches the database did not accept yet."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self, mode: str) -> Iterator[IO[str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, mode, encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, kind: str, rows: Sequence[dict[str, Any]]) -> str:
        """Durably append one batch; returns its id. Raises ``OSError`` if the disk refuses."""
        batch_id = uuid.uuid4().hex
        line = json.dumps({"batch": batch_id, "kind": kind, "rows": list(rows)}, default=str)
        with self._locked("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return batch_id

    def pending_rows(self) -> int:
        """Rows waiting in the journal (0 when there is none)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        return sum(len(batch["rows"]) for batch in self._read(self.path.read_text("utf-8")))

    @staticmethod
    def _read(text: str) -> list[dict[str, Any]]:
        batches = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                batches.append(json.loads(line))
            except json.JSONDecodeError:  # torn by a crash mid-append: never acknowledged
                logger.warning("ledger journal line %d is incomplete; skipped", number)
        return batches

    def replay(self, apply: Callable[[list[dict[str, Any]]], None]) -> int:
        """Hand every batch to ``apply`` (one transaction, idempotent per batch id), then
        truncate the file. Returns the rows replayed; the journal is kept if ``apply`` fails.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        with self._locked("r+") as handle:
            batches = self._read(handle.read())
            if batches:
                apply(batches)
            handle.seek(0)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        return sum(len(batch["rows"]) for batch in batches)
