"""PostgreSQL statements: watched folders, the daemons keep them indexed (`engine.WatchSQL`)."""

from __future__ import annotations

from typing import Any

from psycopg import Connection

from localrank.store.rows import WATCH_COLUMNS, Row, now_iso

Conn = Connection[Any]


def upsert_watch(conn: Conn, collection: str, root: str, options: str) -> Row:
    row = conn.execute(
        "INSERT INTO watches (collection, root, options, created) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (collection, root) DO UPDATE SET options = excluded.options "
        f"RETURNING {WATCH_COLUMNS}",
        (collection, root, options, now_iso()),
    ).fetchone()
    assert row is not None  # an upsert returns its row
    return row


def watch_rows(conn: Conn) -> list[Row]:
    return conn.execute(f"SELECT {WATCH_COLUMNS} FROM watches ORDER BY id").fetchall()


def delete_watch(conn: Conn, watch_id: int) -> Row | None:
    return conn.execute(
        f"DELETE FROM watches WHERE id = %s RETURNING {WATCH_COLUMNS}", (watch_id,)
    ).fetchone()
