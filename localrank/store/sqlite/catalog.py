"""SQLite statements: collections, documents, their filter values and chunks (`engine.CatalogSQL`).

Upsert is delete-then-insert of the document's chunks and vectors in the caller's transaction.
Every write that removes chunks first bumps the collection's generation and records the
removed ids in `tombstones`, so in-memory indexes (this process's or another's) catch up.
Lists of ids are bound as one JSON array (`json_each`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import apsw
import numpy as np

from localrank.store.filters import Scalar
from localrank.store.records import Chunk, Collection, PreparedDocument
from localrank.store.rows import (
    CHUNK_COLUMNS,
    COLLECTION_COLUMNS,
    DOCUMENT_COLUMNS,
    EXPORT_COLUMNS,
    SPAN_COLUMNS,
    STORED_STATE_COLUMNS,
    Row,
    now_iso,
)
from localrank.store.sqlite.db import scalar
from localrank.store.sqlite.vector_index import quantize


def collection_row(conn: apsw.Connection, name: str, *, lock: bool = False) -> Row | None:
    return conn.execute(
        f"SELECT {COLLECTION_COLUMNS} FROM collections WHERE name = ?", (name,)
    ).fetchone()


def collection_rows(conn: apsw.Connection) -> list[Row]:
    return conn.execute(
        f"SELECT {COLLECTION_COLUMNS}, "
        "(SELECT count(*) FROM documents d WHERE d.collection_id = collections.id), "
        "(SELECT count(*) FROM chunks c WHERE c.collection_id = collections.id) "
        "FROM collections ORDER BY name"
    ).fetchall()


def fingerprints(conn: apsw.Connection) -> list[str]:
    query = "SELECT DISTINCT fingerprint FROM collections ORDER BY fingerprint"
    return [str(r[0]) for r in conn.execute(query).fetchall()]


def insert_collection(
    conn: apsw.Connection, name: str, fingerprint: str, model_id: str, dim: int, settings: str
) -> bool:
    row = conn.execute(
        "INSERT INTO collections (name, fingerprint, model_id, dim, created, settings) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING id",
        (name, fingerprint, model_id, dim, now_iso(), settings),
    ).fetchone()
    return row is not None


def delete_collection(conn: apsw.Connection, collection: Collection) -> None:
    conn.execute("DELETE FROM collections WHERE id = ?", (collection.id,))
    conn.execute("DELETE FROM tombstones WHERE collection_id = ?", (collection.id,))
    conn.execute(
        "DELETE FROM jobs WHERE collection = ? AND state IN ('queued', 'running')",
        (collection.name,),
    )
    conn.execute("DELETE FROM watches WHERE collection = ?", (collection.name,))


def bump_generation(conn: apsw.Connection, collection_id: int) -> int:
    return int(
        scalar(
            conn,
            "UPDATE collections SET generation = generation + 1 WHERE id = ? RETURNING generation",
            (collection_id,),
        )
    )


def count_chunks(conn: apsw.Connection, collection_id: int) -> int:
    return int(
        scalar(conn, "SELECT count(*) FROM chunks WHERE collection_id = ?", (collection_id,))
    )


def document_hashes(conn: apsw.Connection, collection_id: int, doc_ids: Sequence[str]) -> list[Row]:
    return conn.execute(
        "SELECT doc_id, content_hash FROM documents "
        "WHERE collection_id = ? AND doc_id IN (SELECT value FROM json_each(?))",
        (collection_id, json.dumps(list(doc_ids))),
    ).fetchall()


def stored_state(conn: apsw.Connection, collection_id: int, doc_id: str) -> Row | None:
    return conn.execute(
        f"SELECT {STORED_STATE_COLUMNS} FROM documents d "
        "WHERE d.collection_id = ? AND d.doc_id = ?",
        (collection_id, doc_id),
    ).fetchone()


def insert_document(
    conn: apsw.Connection, collection_id: int, doc: PreparedDocument, metadata: str, stamp: str
) -> int:
    return int(
        scalar(
            conn,
            "INSERT INTO documents (collection_id, doc_id, text, metadata, source, content_hash, "
            "updated) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (collection_id, doc.doc_id, doc.text, metadata, doc.source, doc.content_hash, stamp),
        )
    )


def update_metadata(
    conn: apsw.Connection, doc_row: int, metadata: str, source: str | None, stamp: str
) -> None:
    conn.execute(
        "UPDATE documents SET metadata = ?, source = ?, updated = ? WHERE id = ?",
        (metadata, source, stamp, doc_row),
    )


def update_content(
    conn: apsw.Connection, doc_row: int, doc: PreparedDocument, metadata: str, stamp: str
) -> None:
    conn.execute(
        "UPDATE documents SET text = ?, metadata = ?, source = ?, content_hash = ?, updated = ? "
        "WHERE id = ?",
        (doc.text, metadata, doc.source, doc.content_hash, stamp, doc_row),
    )


def remove_chunks(conn: apsw.Connection, collection_id: int, doc_row: int, generation: int) -> None:
    """Delete a document's chunks (and, by cascade, vectors), leaving tombstones."""
    conn.execute(
        "INSERT INTO tombstones (collection_id, chunk, generation) "
        "SELECT collection_id, id, ? FROM chunks WHERE doc = ?",
        (generation, doc_row),
    )
    conn.execute("DELETE FROM chunks WHERE doc = ?", (doc_row,))


def write_filter_values(
    conn: apsw.Connection, collection_id: int, doc_row: int, values: list[tuple[str, Scalar]]
) -> None:
    conn.execute("DELETE FROM doc_meta WHERE doc = ?", (doc_row,))
    conn.executemany(
        "INSERT INTO doc_meta (doc, collection_id, key, value) VALUES (?, ?, ?, ?)",
        [(doc_row, collection_id, k, v) for k, v in values],
    )


def insert_chunks(
    conn: apsw.Connection,
    collection_id: int,
    doc_row: int,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
) -> None:
    """Chunk rows and their float32 vectors + binary codes."""
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    codes = quantize(vecs)
    for i, ch in enumerate(chunks):
        chunk_id = scalar(
            conn,
            "INSERT INTO chunks (doc, collection_id, ordinal, text, char_start, char_end, "
            "line_start, line_end, page) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                doc_row,
                collection_id,
                ch.ordinal,
                ch.text,
                ch.char_start,
                ch.char_end,
                ch.line_start,
                ch.line_end,
                ch.page,
            ),
        )
        code = codes[i].tobytes()
        conn.execute(
            "INSERT INTO vectors (chunk, embedding, code) VALUES (?, ?, ?)",
            (chunk_id, vecs[i].tobytes(), code),
        )
        conn.execute(
            "INSERT INTO codes (chunk, collection_id, doc, code) VALUES (?, ?, ?, ?)",
            (chunk_id, collection_id, doc_row, code),
        )


def delete_documents(
    conn: apsw.Connection, collection_id: int, doc_ids: Sequence[str], generation: int
) -> int:
    doc_rows = [
        int(r[0])
        for r in conn.execute(
            "SELECT id FROM documents WHERE collection_id = ? "
            "AND doc_id IN (SELECT value FROM json_each(?))",
            (collection_id, json.dumps(list(doc_ids))),
        )
    ]
    for doc_row in doc_rows:
        remove_chunks(conn, collection_id, doc_row, generation)
        conn.execute("DELETE FROM documents WHERE id = ?", (doc_row,))
    return len(doc_rows)


def document_row(conn: apsw.Connection, collection_id: int, doc_id: str) -> Row | None:
    return conn.execute(
        f"SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.collection_id = ? AND d.doc_id = ?",
        (collection_id, doc_id),
    ).fetchone()


def document_rows(conn: apsw.Connection, collection_id: int, limit: int, after: str) -> list[Row]:
    return conn.execute(
        f"SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.collection_id = ? AND d.doc_id > ? "
        "ORDER BY d.doc_id LIMIT ?",
        (collection_id, after, limit),
    ).fetchall()


def chunk_ids(conn: apsw.Connection, doc_row: int) -> list[int]:
    return [
        int(r[0])
        for r in conn.execute("SELECT id FROM chunks WHERE doc = ? ORDER BY ordinal", (doc_row,))
    ]


def chunk_rows(conn: apsw.Connection, chunk_ids: Sequence[int]) -> list[Row]:
    return conn.execute(
        f"SELECT {CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.doc "
        "WHERE c.id IN (SELECT value FROM json_each(?))",
        (json.dumps([int(i) for i in chunk_ids]),),
    ).fetchall()


def file_rows(conn: apsw.Connection, collection_id: int, bounds: tuple[str, str, str]) -> list[Row]:
    """Through the `documents_source` index."""
    return conn.execute(
        "SELECT doc_id, source, content_hash FROM documents WHERE collection_id = ? "
        "AND (source = ? OR (source >= ? AND source < ?)) ORDER BY source",
        (collection_id, *bounds),
    ).fetchall()


def export_rows(conn: apsw.Connection, collection_id: int, limit: int, after: str) -> list[Row]:
    return conn.execute(
        f"SELECT {EXPORT_COLUMNS} FROM documents WHERE collection_id = ? AND doc_id > ? "
        "ORDER BY doc_id LIMIT ?",
        (collection_id, after, limit),
    ).fetchall()


def spans_and_vectors(conn: apsw.Connection, doc_row: int) -> tuple[list[Row], np.ndarray]:
    found: list[Any] = conn.execute(
        f"SELECT {SPAN_COLUMNS}, v.embedding FROM chunks c JOIN vectors v ON v.chunk = c.id "
        "WHERE c.doc = ? ORDER BY c.ordinal",
        (doc_row,),
    ).fetchall()
    if not found:
        return [], np.empty((0, 0), dtype=np.float32)
    blob = b"".join(r[7] for r in found)
    return found, np.frombuffer(blob, dtype=np.float32).reshape(len(found), -1).copy()
