"""SQLite statements: compaction (`engine.MaintenanceSQL`), and integrity checks."""

from __future__ import annotations

import apsw

from localrank.store.sqlite.db import connect, scalar


def store_bytes(conn: apsw.Connection) -> int:
    """Size of the main database in bytes (page_count * page_size)."""
    pages = scalar(conn, "PRAGMA page_count")
    size = scalar(conn, "PRAGMA page_size")
    return int(pages) * int(size)


def drop_tombstones(conn: apsw.Connection) -> int:
    n = int(scalar(conn, "SELECT count(*) FROM tombstones"))
    conn.execute("DELETE FROM tombstones")
    return n


def bump_epochs(conn: apsw.Connection) -> None:
    conn.execute("UPDATE collections SET epoch = epoch + 1")


def drop_old_jobs(conn: apsw.Connection, keep: int) -> int:
    old = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed') "
            "ORDER BY created DESC, rowid DESC LIMIT -1 OFFSET ?",
            (keep,),
        )
    ]
    conn.executemany("DELETE FROM jobs WHERE id = ?", [(j,) for j in old])
    # A failed job's pending items stay: they are what a retry resumes with.
    conn.execute(
        "DELETE FROM job_items WHERE state != 'pending' AND job IN "
        "(SELECT id FROM jobs WHERE state IN ('done', 'failed'))"
    )
    return len(old)


def optimize(conn: apsw.Connection) -> None:
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")


def integrity_check(conn: apsw.Connection) -> list[str]:
    """`PRAGMA integrity_check` (which includes FTS5's own check) plus FTS5's index-vs-content
    check; ['ok'] when healthy.

    Both run on a short-lived connection to the same file: FTS5 caches its index structure per
    connection, and its integrity check can use that cache after another connection wrote,
    reporting a corruption that a fresh connection (and every query) does not see.
    """
    fresh = connect(conn.filename)
    try:
        result = [str(r[0]) for r in fresh.execute("PRAGMA integrity_check")]
        try:
            fresh.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 0)")
        except apsw.Error as exc:  # the FTS index disagrees with its content table
            result.append(f"fts: {exc}")
    finally:
        fresh.close()
    return result


def counts(conn: apsw.Connection) -> dict[str, int]:
    """Row counts that must agree: chunks == vectors == codes == fts rows."""
    one = lambda sql: int(scalar(conn, sql))  # noqa: E731
    return {
        "documents": one("SELECT count(*) FROM documents"),
        "chunks": one("SELECT count(*) FROM chunks"),
        "vectors": one("SELECT count(*) FROM vectors"),
        "codes": one("SELECT count(*) FROM codes"),
        "chunks_without_code": one(
            "SELECT count(*) FROM chunks c LEFT JOIN codes k ON k.chunk = c.id "
            "WHERE k.chunk IS NULL OR k.collection_id != c.collection_id OR k.doc != c.doc"
        ),
        "chunks_without_vector": one(
            "SELECT count(*) FROM chunks c LEFT JOIN vectors v ON v.chunk = c.id "
            "WHERE v.chunk IS NULL"
        ),
        # external-content FTS5 keeps one docsize row per indexed chunk
        "fts_rows": one("SELECT count(*) FROM chunks_fts_docsize"),
    }
