"""PostgreSQL statements: collections, documents, their filter values and chunks
(`engine.CatalogSQL`).

A write to a collection first locks its row (`lock=True`: `FOR UPDATE`), so writes to one
collection from several daemons are serialised: the fingerprint check holds for the whole
transaction and two daemons upserting the same new document cannot both insert it. Chunks and
their vectors go in with binary COPY; lists of ids are bound as arrays (`= ANY(%s)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
from psycopg import Connection

from localrank.store.filters import Scalar
from localrank.store.postgres import vector_index
from localrank.store.postgres.db import Vec, one
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

Conn = Connection[Any]
CHUNK_TYPES = ("int8", "int8", "int4", "text", "int4", "int4", "int4", "int4", "int4", "vector")


def collection_row(conn: Conn, name: str, *, lock: bool = False) -> Row | None:
    query = f"SELECT {COLLECTION_COLUMNS} FROM collections WHERE name = %s"
    return conn.execute(query + (" FOR UPDATE" if lock else ""), (name,)).fetchone()


def collection_rows(conn: Conn) -> list[Row]:
    return conn.execute(
        f"SELECT {COLLECTION_COLUMNS}, "
        "(SELECT count(*) FROM documents d WHERE d.collection_id = collections.id), "
        "(SELECT count(*) FROM chunks c WHERE c.collection_id = collections.id) "
        "FROM collections ORDER BY name"
    ).fetchall()


def fingerprints(conn: Conn) -> list[str]:
    query = "SELECT DISTINCT fingerprint FROM collections ORDER BY fingerprint"
    return [str(r[0]) for r in conn.execute(query).fetchall()]


def insert_collection(
    conn: Conn, name: str, fingerprint: str, model_id: str, dim: int, settings: str
) -> bool:
    """With the collection's HNSW index (`vector_index`)."""
    kind = vector_index.index_type_for(dim)
    row = conn.execute(
        "INSERT INTO collections (name, fingerprint, model_id, dim, index_type, created, "
        "settings) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
        (name, fingerprint, model_id, dim, kind, now_iso(), settings),
    ).fetchone()
    if row is None:  # taken, perhaps by another daemon a moment ago
        return False
    conn.execute(vector_index.create_index(int(row[0]), kind, dim))
    return True


def delete_collection(conn: Conn, collection: Collection) -> None:
    conn.execute(vector_index.drop_index(collection.id))
    conn.execute("DELETE FROM collections WHERE id = %s", (collection.id,))
    conn.execute(
        "DELETE FROM jobs WHERE collection = %s AND state IN ('queued', 'running')",
        (collection.name,),
    )
    conn.execute("DELETE FROM watches WHERE collection = %s", (collection.name,))


def bump_generation(conn: Conn, collection_id: int) -> int:
    return int(
        one(
            conn,
            "UPDATE collections SET generation = generation + 1 WHERE id = %s RETURNING generation",
            (collection_id,),
        )
    )


def count_chunks(conn: Conn, collection_id: int) -> int:
    return int(one(conn, "SELECT count(*) FROM chunks WHERE collection_id = %s", (collection_id,)))


def document_hashes(conn: Conn, collection_id: int, doc_ids: Sequence[str]) -> list[Row]:
    return conn.execute(
        "SELECT doc_id, content_hash FROM documents WHERE collection_id = %s AND doc_id = ANY(%s)",
        (collection_id, list(doc_ids)),
    ).fetchall()


def stored_state(conn: Conn, collection_id: int, doc_id: str) -> Row | None:
    return conn.execute(
        f"SELECT {STORED_STATE_COLUMNS} FROM documents d "
        "WHERE d.collection_id = %s AND d.doc_id = %s",
        (collection_id, doc_id),
    ).fetchone()


def insert_document(
    conn: Conn, collection_id: int, doc: PreparedDocument, metadata: str, stamp: str
) -> int:
    return int(
        one(
            conn,
            "INSERT INTO documents (collection_id, doc_id, text, metadata, source, content_hash, "
            "updated) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (collection_id, doc.doc_id, doc.text, metadata, doc.source, doc.content_hash, stamp),
        )
    )


def update_metadata(
    conn: Conn, doc_row: int, metadata: str, source: str | None, stamp: str
) -> None:
    conn.execute(
        "UPDATE documents SET metadata = %s, source = %s, updated = %s WHERE id = %s",
        (metadata, source, stamp, doc_row),
    )


def update_content(
    conn: Conn, doc_row: int, doc: PreparedDocument, metadata: str, stamp: str
) -> None:
    conn.execute(
        "UPDATE documents SET text = %s, metadata = %s, source = %s, content_hash = %s, "
        "updated = %s WHERE id = %s",
        (doc.text, metadata, doc.source, doc.content_hash, stamp, doc_row),
    )


def remove_chunks(conn: Conn, collection_id: int, doc_row: int, generation: int) -> None:
    """Vectors live in the chunk rows: nothing else to remove (no in-memory index to tell)."""
    conn.execute("DELETE FROM chunks WHERE doc = %s", (doc_row,))


def number(value: int | float) -> Decimal:
    """A metadata number as `numeric`: exact for integers, the shortest repr for floats."""
    return Decimal(value) if isinstance(value, int) else Decimal(repr(float(value)))


def split_values(values: Sequence[Scalar]) -> tuple[list[str], list[Decimal]]:
    """Filter values as (strings, numbers): each compared with its own column."""
    strs = [v for v in values if isinstance(v, str)]
    nums = [number(v) for v in values if not isinstance(v, str)]
    return strs, nums


def write_filter_values(
    conn: Conn, collection_id: int, doc_row: int, values: list[tuple[str, Scalar]]
) -> None:
    conn.execute("DELETE FROM doc_meta WHERE doc = %s", (doc_row,))
    typed = [
        (doc_row, collection_id, k, v, None)
        if isinstance(v, str)
        else (doc_row, collection_id, k, None, number(v))
        for k, v in values
    ]
    if typed:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO doc_meta (doc, collection_id, key, str_value, num_value) "
                "VALUES (%s, %s, %s, %s, %s)",
                typed,
            )


def insert_chunks(
    conn: Conn, collection_id: int, doc_row: int, chunks: Sequence[Chunk], vectors: np.ndarray
) -> None:
    """COPY a document's chunks with their vectors, in binary (no float formatting)."""
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY chunks (doc, collection_id, ordinal, text, char_start, char_end, line_start, "
            "line_end, page, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(list(CHUNK_TYPES))
        for i, ch in enumerate(chunks):
            copy.write_row(
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
                    Vec(vecs[i]),
                )
            )


def delete_documents(
    conn: Conn, collection_id: int, doc_ids: Sequence[str], generation: int
) -> int:
    """Chunks, vectors and filter values cascade."""
    deleted = conn.execute(
        "DELETE FROM documents WHERE collection_id = %s AND doc_id = ANY(%s) RETURNING id",
        (collection_id, list(doc_ids)),
    ).fetchall()
    return len(deleted)


def document_row(conn: Conn, collection_id: int, doc_id: str) -> Row | None:
    return conn.execute(
        f"SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.collection_id = %s AND d.doc_id = %s",
        (collection_id, doc_id),
    ).fetchone()


def document_rows(conn: Conn, collection_id: int, limit: int, after: str) -> list[Row]:
    return conn.execute(
        f"SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.collection_id = %s "
        "AND d.doc_id > %s ORDER BY d.doc_id LIMIT %s",
        (collection_id, after, limit),
    ).fetchall()


def chunk_ids(conn: Conn, doc_row: int) -> list[int]:
    return [
        int(r[0])
        for r in conn.execute("SELECT id FROM chunks WHERE doc = %s ORDER BY ordinal", (doc_row,))
    ]


def chunk_rows(conn: Conn, chunk_ids: Sequence[int]) -> list[Row]:
    return conn.execute(
        f"SELECT {CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.doc "
        "WHERE c.id = ANY(%s)",
        ([int(i) for i in chunk_ids],),
    ).fetchall()


def file_rows(conn: Conn, collection_id: int, bounds: tuple[str, str, str]) -> list[Row]:
    """Source compares in byte order: the column's collation is "C"."""
    return conn.execute(
        "SELECT doc_id, source, content_hash FROM documents WHERE collection_id = %s "
        "AND (source = %s OR (source >= %s AND source < %s)) ORDER BY source",
        (collection_id, *bounds),
    ).fetchall()


def export_rows(conn: Conn, collection_id: int, limit: int, after: str) -> list[Row]:
    return conn.execute(
        f"SELECT {EXPORT_COLUMNS} FROM documents WHERE collection_id = %s AND doc_id > %s "
        "ORDER BY doc_id LIMIT %s",
        (collection_id, after, limit),
    ).fetchall()


def spans_and_vectors(conn: Conn, doc_row: int) -> tuple[list[Row], np.ndarray]:
    """Vectors in pgvector's binary format, loaded as float32 arrays."""
    with conn.cursor(binary=True) as cur:
        found = cur.execute(
            f"SELECT {SPAN_COLUMNS}, c.embedding FROM chunks c WHERE c.doc = %s ORDER BY c.ordinal",
            (doc_row,),
        ).fetchall()
    if not found:
        return [], np.empty((0, 0), dtype=np.float32)
    return found, np.stack([r[7] for r in found])
