"""SQLite statements: watched folders, the daemon keeps them indexed (`engine.WatchSQL`)."""

from __future__ import annotations

import apsw

from localrank.store.rows import WATCH_COLUMNS, Row, now_iso


def upsert_watch(conn: apsw.Connection, collection: str, root: str, options: str) -> Row:
    row = conn.execute(
        "INSERT INTO watches (collection, root, options, created) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (collection, root) DO UPDATE SET options = excluded.options "
        f"RETURNING {WATCH_COLUMNS}",
        (collection, root, options, now_iso()),
    ).fetchone()
    assert row is not None  # an upsert returns its row
    return row


def watch_rows(conn: apsw.Connection) -> list[Row]:
    return conn.execute(f"SELECT {WATCH_COLUMNS} FROM watches ORDER BY id").fetchall()


def delete_watch(conn: apsw.Connection, watch_id: int) -> Row | None:
    return conn.execute(
        f"DELETE FROM watches WHERE id = ? RETURNING {WATCH_COLUMNS}", (watch_id,)
    ).fetchone()
