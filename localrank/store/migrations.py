"""Named, ordered migrations, each applied in the same transaction as the record of it: one
runner for both engines, given a small description of the engine (`Dialect`).

Each migration runs in its own write transaction, which first takes the engine's migration lock
(SQLite: `BEGIN IMMEDIATE` already is one; PostgreSQL: an advisory lock) and checks the record
again, so processes that start together on a new database apply each migration once. Both
engines' DDL is transactional: a migration that fails leaves neither its tables nor its record.

Both engines record what they applied in `localrank_migrations` (name, applied). SQLite files
made before that name called the table `migrations`: the runner renames it (`legacy_table`) in
its first transaction, and the file migrates on from what it recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from localrank.store.rows import now_iso

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "localrank_migrations"


class Migration(NamedTuple):
    name: str
    sql: str


@dataclass(frozen=True)
class Dialect:
    """What the runner needs to know of an engine."""

    placeholder: str  # the driver's parameter marker: "?" (apsw), "%s" (psycopg)
    # A statement of one parameter, a table's name, that returns a row when the table exists.
    table_exists: str
    # Run first in each migration's transaction, when the transaction itself is no lock.
    lock: str | None = None
    # The migrations table's name in databases made before it was MIGRATIONS_TABLE.
    legacy_table: str | None = None


class Writable(Protocol):
    def write(self) -> AbstractContextManager[Any]:
        """One write transaction: committed at the end of the block, rolled back on error."""
        ...


def _exists(dialect: Dialect, conn: Any, table: str) -> bool:
    return conn.execute(dialect.table_exists, (table,)).fetchone() is not None


def applied_migrations(dialect: Dialect, conn: Any) -> list[str]:
    """Names of the migrations recorded in this database, in order (by name: their numbers
    are the order they apply in)."""
    table = MIGRATIONS_TABLE
    if not _exists(dialect, conn, table):
        if dialect.legacy_table is None or not _exists(dialect, conn, dialect.legacy_table):
            return []
        table = dialect.legacy_table
    return [r[0] for r in conn.execute(f"SELECT name FROM {table} ORDER BY name")]


def _prepare_record(dialect: Dialect, conn: Any) -> None:
    """The table of applied migrations: made, or adopted under its old name."""
    if _exists(dialect, conn, MIGRATIONS_TABLE):
        return
    legacy = dialect.legacy_table
    if legacy is not None and _exists(dialect, conn, legacy):
        conn.execute(f"ALTER TABLE {legacy} RENAME TO {MIGRATIONS_TABLE}")
        return
    conn.execute(f"CREATE TABLE {MIGRATIONS_TABLE} (name text PRIMARY KEY, applied text NOT NULL)")


def migrate(
    dialect: Dialect, db: Writable, migrations: Sequence[Migration], *, where: str
) -> list[str]:
    """Apply the migrations this database lacks, in order; return the names applied now.
    `where` names the database in the log."""
    names = [m.name for m in migrations]
    if names != sorted(names):
        raise ValueError("migrations apply in the order of their names: number them so")
    p = dialect.placeholder
    with db.write() as conn:
        if dialect.lock:
            conn.execute(dialect.lock)
        _prepare_record(dialect, conn)
        already = set(applied_migrations(dialect, conn))
    done_now: list[str] = []
    for name, sql in migrations:
        if name in already:
            continue
        if already:  # an upgrade, not a new database: some migrations take a while on big ones
            log.info("database %s: applying migration %s", where, name)
        with db.write() as conn:
            if dialect.lock:
                conn.execute(dialect.lock)
            # Checked again under the lock: another process may have migrated meanwhile.
            if conn.execute(
                f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE name = {p}", (name,)
            ).fetchone():
                continue
            conn.execute(sql)
            conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (name, applied) VALUES ({p}, {p})",
                (name, now_iso()),
            )
        done_now.append(name)
    return done_now
