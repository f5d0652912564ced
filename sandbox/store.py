"""SQLite persistence for sandbox records: one JSON document per record, a few indexed columns."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .like import sql_server_like

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    email TEXT,
    modifiedon TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (entity, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_email ON records (entity, email);
CREATE INDEX IF NOT EXISTS records_modifiedon ON records (entity, modifiedon);
CREATE TABLE IF NOT EXISTS options (
    entity TEXT NOT NULL,
    attribute TEXT NOT NULL,
    value INTEGER NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (entity, attribute, value)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class DuplicateKey(Exception):
    """A record with this id already exists."""


class Store:
    """Thread-safe access to the sandbox database (one connection per thread, WAL mode)."""

    def __init__(self, path: Path) -> None:
        """Open (and create) the database file at path."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self.conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    def conn(self) -> sqlite3.Connection:
        """The calling thread's connection (waitress runs requests on a thread pool)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            # FetchXML `like` follows SQL Server's LIKE ([sets], ranges), which SQLite's LIKE does not know.
            conn.create_function("crm_like", 2, sql_server_like, deterministic=True)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection opened by any thread."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction for many writes (an ExecuteMultiple batch), so each record is not its own commit."""
        conn = self.conn()
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """One item of a batch: undone alone when it faults, as each item is its own transaction in Dynamics."""
        conn = self.conn()
        conn.execute("SAVEPOINT item")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO item")
            conn.execute("RELEASE item")
            raise
        conn.execute("RELEASE item")

    @staticmethod
    def _email(data: dict[str, Any]) -> str | None:
        value = data.get("emailaddress1") or data.get("internalemailaddress")
        return value.lower() if isinstance(value, str) else None

    def insert(self, entity: str, rid: str, data: dict[str, Any]) -> None:
        """Insert a record; raise DuplicateKey when the id exists."""
        try:
            self.conn().execute(
                "INSERT INTO records (entity, id, email, modifiedon, data) VALUES (?, ?, ?, ?, ?)",
                (entity, rid, self._email(data), data.get("modifiedon"), json.dumps(data)),
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateKey(rid) from exc

    def insert_many(self, entity: str, rows: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Insert many records in one transaction; return how many were written."""
        conn = self.conn()
        params = [(entity, rid, self._email(d), d.get("modifiedon"), json.dumps(d)) for rid, d in rows]
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT INTO records (entity, id, email, modifiedon, data) VALUES (?, ?, ?, ?, ?)", params)
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            raise DuplicateKey(str(exc)) from exc
        conn.execute("COMMIT")
        return len(params)

    def get(self, entity: str, rid: str) -> dict[str, Any] | None:
        """One record's data, or None."""
        row = self.conn().execute("SELECT data FROM records WHERE entity = ? AND id = ?", (entity, rid)).fetchone()
        return json.loads(row[0]) if row else None

    def find_entity(self, entities: Sequence[str], rid: str) -> tuple[str, dict[str, Any]] | None:
        """Find a record by id among several entities (activity union)."""
        marks = ",".join("?" * len(entities))
        row = (
            self.conn()
            .execute(
                f"SELECT entity, data FROM records WHERE entity IN ({marks}) AND id = ?",  # noqa: S608
                (*entities, rid),
            )
            .fetchone()
        )
        return (row[0], json.loads(row[1])) if row else None

    def replace(self, entity: str, rid: str, data: dict[str, Any]) -> None:
        """Overwrite a record's data."""
        self.conn().execute(
            "UPDATE records SET data = ?, email = ?, modifiedon = ? WHERE entity = ? AND id = ?",
            (json.dumps(data), self._email(data), data.get("modifiedon"), entity, rid),
        )

    def delete(self, entity: str, rid: str) -> bool:
        """Delete a record; True when it existed."""
        cur = self.conn().execute("DELETE FROM records WHERE entity = ? AND id = ?", (entity, rid))
        return cur.rowcount > 0

    def select(self, sql: str, params: Sequence[Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Run a SELECT entity, id, data … statement built by the query engine."""
        return [(e, i, json.loads(d)) for e, i, d in self.conn().execute(sql, params)]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """First column of the first row."""
        row = self.conn().execute(sql, params).fetchone()
        return row[0] if row else None

    def counts(self) -> dict[str, int]:
        """Number of records per entity."""
        return dict(self.conn().execute("SELECT entity, COUNT(*) FROM records GROUP BY entity").fetchall())

    def wipe(self) -> None:
        """Remove every record, custom option and setting."""
        conn = self.conn()
        conn.execute("BEGIN")
        conn.execute("DELETE FROM records")
        conn.execute("DELETE FROM options")
        conn.execute("DELETE FROM meta")
        conn.execute("COMMIT")

    def custom_options(self, entity: str, attribute: str) -> dict[int, str]:
        """Custom option values added by InsertOptionValue or the platform-option switch."""
        rows = self.conn().execute(
            "SELECT value, label FROM options WHERE entity = ? AND attribute = ? ORDER BY value",
            (entity, attribute),
        )
        return dict(rows.fetchall())

    def add_option(self, entity: str, attribute: str, value: int, label: str) -> None:
        """Record a custom option value."""
        self.conn().execute(
            "INSERT OR REPLACE INTO options (entity, attribute, value, label) VALUES (?, ?, ?, ?)",
            (entity, attribute, value, label),
        )

    def remove_options(self, entity: str, attribute: str, label: str) -> None:
        """Remove custom options with the given label (case-insensitive)."""
        self.conn().execute(
            "DELETE FROM options WHERE entity = ? AND attribute = ? AND lower(label) = lower(?)",
            (entity, attribute, label),
        )

    def meta(self, key: str, default: str | None = None) -> str | None:
        """A stored setting."""
        value = self.scalar("SELECT value FROM meta WHERE key = ?", (key,))
        return default if value is None else value

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        self.conn().execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
