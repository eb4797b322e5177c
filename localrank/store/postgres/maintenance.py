"""PostgreSQL statements: compaction (`engine.MaintenanceSQL`), and the VACUUM FULL that gives
the space back."""

from __future__ import annotations

from typing import Any

from psycopg import Connection, sql

from localrank.store.postgres.db import one
from localrank.store.postgres.schema import TABLES

Conn = Connection[Any]


def store_bytes(conn: Conn) -> int:
    """On-disk size of the store's tables with their indexes and TOAST."""
    total = one(
        conn,
        "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM unnest(%s::text[]) t",
        (list(TABLES),),
    )
    return int(total)


def drop_tombstones(conn: Conn) -> int:
    """No tombstones here: no process keeps an index in memory."""
    return 0


def bump_epochs(conn: Conn) -> None:
    conn.execute("UPDATE collections SET epoch = epoch + 1")


def drop_old_jobs(conn: Conn, keep: int) -> int:
    old = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed') "
            "ORDER BY created DESC, seq DESC OFFSET %s",
            (keep,),
        )
    ]
    if old:
        conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (old,))
    # A failed job's pending items stay: they are what a retry resumes with.
    conn.execute(
        "DELETE FROM job_items WHERE state != 'pending' "
        "AND job IN (SELECT id FROM jobs WHERE state IN ('done', 'failed'))"
    )
    return len(old)


def optimize(conn: Conn) -> None:
    """Nothing to merge: VACUUM FULL (`PostgresStore.reclaim_space`) rebuilds every index."""


def vacuum_full() -> list[sql.Composed]:
    """VACUUM FULL of every table (rewrites them and rebuilds their indexes, HNSW included):
    what gives deleted rows' space back to the file system. It locks each table while it runs,
    which is why it is the explicit `compact` and not automatic (autovacuum reuses space)."""
    return [sql.SQL("VACUUM (FULL, ANALYZE) {}").format(sql.Identifier(t)) for t in TABLES]
