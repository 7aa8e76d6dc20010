"""The runner's ledger writer: rows leave the task's hot path, and none is ever lost.

Rows are queued by the task threads and written by one background thread in small batches:
whatever queued while the last transaction ran. A row is never held back to wait for
company: a row in memory is a row a SIGKILL loses (a 0.25 s batching wait lost the last
rows of the fault suite's ``sigkill`` scenario and was reverted).
A batch the database refuses (a lock held by another writer, a restarted server) is retried
with exponential backoff for ``retry_seconds``; after that — or once the writer is closing and
``close_wait_s`` ran out — it goes to the ledger's local journal (append + ``fsync``) and is
inserted the next time a ledger on that URL is opened for writing. :attr:`deferred_rows`
says how many rows took that path, so the run can warn and emit an event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from prefect_cloudsched.core.records import PlacementRecord


class _Journal(Protocol):
    path: Any

    def append(self, kind: str, payload: Any) -> None: ...


class _LedgerLike(Protocol):
    """What the writer needs of ``adapters.ledger.Ledger`` (which re-exports the writer)."""

    journal: _Journal

    def record(self, records: list[PlacementRecord]) -> Any: ...

    def record_interruption(self, **row: Any) -> Any: ...


logger = logging.getLogger("prefect_cloudsched.ledger")

#: Default retry window: longer than a checkpointing SQLite writer or a PostgreSQL restart.
DEFAULT_RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class _Interruption:
    values: dict[str, Any]


@dataclass(eq=False, repr=False)
class BufferedWriter:
    """Writes ledger rows from a background thread; retries, then journals what is refused.

    A live writer thread: compared by identity, not ``repr``-ed field by field.

    Args:
        ledger: Where the rows go.
        interval: Longest time a queued row waits before its batch is written.
        retry_seconds: How long a refused batch is retried before it is journaled.
        close_wait_s: At ``close()``, how long a refused batch may still be retried.
        max_backoff_s: Longest pause between two attempts.
    """

    ledger: _LedgerLike
    interval: float = 0.25
    _: KW_ONLY
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    close_wait_s: float = 5.0
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        self._queue: queue.Queue[PlacementRecord | _Interruption | None] = queue.Queue()
        self._give_up_by = float("inf")
        self._counts_lock = threading.Lock()
        self.errors: list[str] = []
        self.written_rows = 0
        self.deferred_rows = 0
        self.lost_rows = 0
        self._thread = threading.Thread(target=self._run, name="cloudsched-ledger", daemon=True)
        self._thread.start()

    @property
    def journal_path(self) -> str:
        """Where deferred rows wait (for the warning the runner logs)."""
        return str(self.ledger.journal.path)

    def put(self, record: PlacementRecord) -> None:
        """Queue one placement row."""
        self._queue.put(record)

    def put_interruption(self, **values: Any) -> None:
        """Queue one interruption row (the keywords of ``Ledger.record_interruption``)."""
        values.setdefault("at", datetime.now(UTC))
        values.setdefault("detail", "")
        self._queue.put(_Interruption(values))

    def _drain(self, first: Any) -> tuple[list[Any], bool]:
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
                first = self._queue.get(timeout=self.interval)
            except queue.Empty:
                continue
            batch, stop = self._drain(first)
            placements = [r for r in batch if isinstance(r, PlacementRecord)]
            others = [r.values for r in batch if isinstance(r, _Interruption)]
            if placements:
                self._write("placements", placements, self.ledger.record)
            if others:
                self._write("interruptions", others, self._record_interruptions)
            if stop:
                return

    def _record_interruptions(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:  # rare: one transaction each is fine
            self.ledger.record_interruption(**row)

    def _write(self, kind: str, rows: list[Any], insert: Any) -> None:
        deadline = time.monotonic() + self.retry_seconds
        delay, attempts = 0.05, 0
        while True:
            attempts += 1
            try:
                insert(rows)
            except Exception as err:
                last = f"{type(err).__name__}"
                give_up = min(deadline, self._give_up_by)
                if time.monotonic() + delay >= give_up:
                    break
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
            else:
                with self._counts_lock:
                    self.written_rows += len(rows)
                return
        self._defer(kind, rows, f"{attempts} attempt(s), last {last}")

    def _defer(self, kind: str, rows: list[Any], why: str) -> None:
        from prefect_cloudsched.adapters.ledger_journal import placement_to_json

        payload = (
            [placement_to_json(r) for r in rows]
            if kind == "placements"
            else [{**r, "at": r["at"].isoformat()} for r in rows]
        )
        try:
            self.ledger.journal.append(kind, payload)
        except OSError as err:
            with self._counts_lock:
                self.lost_rows += len(rows)
            self.errors.append(
                f"{len(rows)} ledger row(s) lost: the database refused them ({why}) and the "
                f"journal {self.journal_path} could not be written ({err.strerror})"
            )
            return
        with self._counts_lock:
            self.deferred_rows += len(rows)
        logger.warning(
            "ledger: %d %s row(s) deferred to %s (%s); replayed on the next open",
            len(rows),
            kind,
            self.journal_path,
            why,
        )

    def close(self) -> None:
        """Flush: every queued row is in the database or the journal when this returns."""
        self._give_up_by = time.monotonic() + self.close_wait_s
        self._queue.put(None)
        self._thread.join()
