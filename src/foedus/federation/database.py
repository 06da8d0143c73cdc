"""The coordinator's database connection: SQLite (the default, a file in the state dir) or
PostgreSQL (``database: postgresql://...`` in ``coordinator.yaml``).

This is the whole seam between :class:`~foedus.federation.store.Store` and a database: the
store writes its SQL once, with ``?`` placeholders and only what both databases accept, and a
:class:`Database` runs it. Each backend knows what the SQL cannot say portably: how to
connect, how to open a transaction, whether a table exists (for the migrations), and how to
commit without waiting for the disk.

**Durability.** Every transaction survives the coordinator's death (even SIGKILL) on both
backends. A transaction opened with ``durable=False`` (a heartbeat: the site sends another in
seconds) does not wait for its commit to reach the disk, so an OS crash or a power cut may
lose it; every other one waits. This matters: a commit that waits costs a disk flush, some
30 ms on this project's machine (SQLite's default rollback journal, two flushes) or 7 ms (its
write-ahead log, one), and the coordinator runs its store on its event loop, so a hundred
sites heartbeating every 2 s kept it flushing all the time. SQLite runs in WAL mode with
``synchronous=FULL``, lowered to ``NORMAL`` for a non-durable transaction; PostgreSQL sets
``synchronous_commit = off`` for one.

PostgreSQL is reached with psycopg 3, imported only when a ``postgresql://`` URL is used, so
SQLite deployments need nothing beyond the standard library. A PostgreSQL connection that
breaks (the server restarted) is opened again on the next transaction: the coordinator's next
tick carries on instead of failing forever.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from foedus.core.errors import ConfigError, require

__all__ = ["POSTGRES_SCHEMES", "Cursor", "Database", "open_database"]

#: URL schemes that select PostgreSQL (libpq accepts both)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: the advisory lock two coordinators starting on one PostgreSQL database take to migrate it
#: one after the other (any constant; it names this application's lock)
_MIGRATION_LOCK = 0x6F6564


class Cursor(Protocol):
    """What the store uses of a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Database:
    """One connection, used by one transaction at a time (the coordinator is one process and
    its calls are short)."""

    #: the backend's name, for messages and tests
    kind = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        """A transaction: committed when the block ends, rolled back when it raises;
        ``durable=False``: the commit does not wait for the disk (see the module's doc)."""
        raise NotImplementedError
        yield  # pragma: no cover  (makes this a generator for the type checker)

    def has_table(self, tx: Transaction, name: str) -> bool:
        raise NotImplementedError

    def lock_for_migration(self, tx: Transaction) -> None:
        """Serialise migrations between coordinators sharing the database (a no-op where only
        one process can open it)."""

    def close(self) -> None:
        raise NotImplementedError


class Transaction:
    """A cursor inside one transaction, taking ``?`` placeholders on every backend."""

    def __init__(self, cursor: Any, placeholder: str) -> None:
        self._cursor = cursor
        self._placeholder = placeholder

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        self._cursor.execute(sql, tuple(args))
        cursor: Cursor = self._cursor
        return cursor

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())


class SQLiteDatabase(Database):
    """An SQLite file, in autocommit mode with explicit ``BEGIN``/``COMMIT``."""

    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        with self._lock:
            cur = self._db.cursor()
            if not durable:  # set between transactions: SQLite reads it at each commit
                cur.execute("PRAGMA synchronous = NORMAL")
            try:
                cur.execute("BEGIN")
                try:
                    yield Transaction(cur, "?")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            finally:
                if not durable:
                    cur.execute("PRAGMA synchronous = FULL")

    def has_table(self, tx: Transaction, name: str) -> bool:
        tx.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return tx.fetchone() is not None

    def close(self) -> None:
        self._db.close()


class PostgresDatabase(Database):
    """A PostgreSQL database at ``url`` (a libpq URL: user, password, host, port, dbname)."""

    kind = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._psycopg = require("psycopg", "federation")
        self._url = url
        self._conn = self._connect()

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except self._psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"database: cannot connect to PostgreSQL: {first}") from exc

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        with self._lock:
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            with self._conn.transaction(), self._conn.cursor() as cur:
                if not durable:
                    cur.execute("SET LOCAL synchronous_commit = off")
                yield Transaction(cur, "%s")

    def has_table(self, tx: Transaction, name: str) -> bool:
        tx.execute("SELECT to_regclass(?) IS NOT NULL", (name,))
        return bool(tx.fetchone()[0])

    def lock_for_migration(self, tx: Transaction) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def close(self) -> None:
        self._conn.close()


def open_database(where: str | Path) -> Database:
    """A ``postgresql://`` (or ``postgres://``) URL opens PostgreSQL; anything else is the path
    of an SQLite file."""
    if isinstance(where, str) and where.startswith(POSTGRES_SCHEMES):
        return PostgresDatabase(where)
    return SQLiteDatabase(where)
