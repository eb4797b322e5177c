"""SQLite: watched folders (the daemon keeps them indexed), and documents found by the file they
were read from. Reads take a connection, writes run inside `db.write()`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import apsw

from localrank.errors import NotFound
from localrank.store.records import Collection, DocumentFile, Watch
from localrank.store.sqlite.catalog import bump_generation, get_collection, remove_chunks
from localrank.store.sqlite.db import Database, now_iso

_COLUMNS = "id, collection, root, options, created"


def _watch(row: Any) -> Watch:
    return Watch(int(row[0]), row[1], row[2], json.loads(row[3]), row[4])


def add_watch(db: Database, collection: str, root: str, options: dict[str, Any]) -> Watch:
    """Register (or update the options of) the watch of `root` into `collection`."""
    with db.write() as conn:
        get_collection(conn, collection)
        conn.execute(
            "INSERT INTO watches (collection, root, options, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (collection, root) DO UPDATE SET options = excluded.options",
            (collection, root, json.dumps(options, sort_keys=True), now_iso()),
        )
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM watches WHERE collection = ? AND root = ?", (collection, root)
        ).fetchone()
        return _watch(row)


def list_watches(conn: apsw.Connection) -> list[Watch]:
    """Every registered watch, oldest first."""
    return [_watch(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM watches ORDER BY id")]


def remove_watch(db: Database, watch_id: int) -> Watch:
    """Unregister a watch (its documents stay); NotFound if there is no such watch."""
    with db.write() as conn:
        row = conn.execute(f"SELECT {_COLUMNS} FROM watches WHERE id = ?", (watch_id,)).fetchone()
        if row is None:
            raise NotFound(f"no watch with id {watch_id}", param="watch")
        conn.execute("DELETE FROM watches WHERE id = ?", (watch_id,))
        return _watch(row)


def document_files(conn: apsw.Connection, collection: Collection, root: str) -> list[DocumentFile]:
    """Documents whose source is `root` or lies under it (the `documents_source` index)."""
    base = root.rstrip("/")
    # Under `base/`: every string from "base/" up to (not including) "base0" ('0' follows '/').
    return [
        DocumentFile(r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT doc_id, source, content_hash FROM documents WHERE collection_id = ? "
            "AND (source = ? OR (source >= ? AND source < ?)) ORDER BY source",
            (collection.id, base, base + "/", base + "0"),
        )
    ]


def delete_documents(db: Database, collection_name: str, doc_ids: Sequence[str]) -> int:
    """Delete the named documents that exist, in one transaction; returns how many."""
    if not doc_ids:
        return 0
    with db.write() as conn:
        c = get_collection(conn, collection_name)
        rows = [
            int(r[0])
            for r in conn.execute(
                "SELECT id FROM documents WHERE collection_id = ? "
                "AND doc_id IN (SELECT value FROM json_each(?))",
                (c.id, json.dumps(list(doc_ids))),
            )
        ]
        if not rows:
            return 0
        gen = bump_generation(conn, c.id)
        for row in rows:
            remove_chunks(conn, c.id, row, gen)
            conn.execute("DELETE FROM documents WHERE id = ?", (row,))
        return len(rows)
