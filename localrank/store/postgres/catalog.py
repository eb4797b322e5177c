"""PostgreSQL: collections, documents, chunks and watched folders. Reads take a connection,
writes run inside the caller's transaction (`Database.write()`).

A write to a collection first locks its row (`FOR UPDATE`, which also bumps its generation), so
writes to one collection from several daemons are serialised: the fingerprint check holds for
the whole transaction and two daemons upserting the same new document cannot both insert it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
from psycopg import Connection, sql

from localrank.errors import Conflict, NotFound
from localrank.store.filters import Scalar, metadata_rows
from localrank.store.postgres import vector_index
from localrank.store.postgres.db import Vec, now_iso, one
from localrank.store.records import (
    Chunk,
    Collection,
    DocumentFile,
    PreparedDocument,
    StoredChunk,
    StoredDocument,
    Watch,
    WriteResult,
    check_collection_name,
)

Conn = Connection[Any]
COLLECTION_COLUMNS = (
    "id, name, fingerprint, model_id, dim, created, settings, generation, epoch, index_type"
)


def _collection(row: Any) -> Collection:
    return Collection(
        id=int(row[0]),
        name=row[1],
        fingerprint=row[2],
        model_id=row[3],
        dim=int(row[4]),
        created=row[5],
        settings=json.loads(row[6]),
        generation=int(row[7]),
        epoch=int(row[8]),
    )


def get_collection(conn: Conn, name: str, *, lock: bool = False) -> Collection:
    """The collection called `name` (row-locked for the transaction with `lock`), or NotFound."""
    query = f"SELECT {COLLECTION_COLUMNS} FROM collections WHERE name = %s"
    row = conn.execute(query + (" FOR UPDATE" if lock else ""), (name,)).fetchone()
    if row is None:
        raise NotFound(f"collection {name!r} does not exist", param="collection")
    return _collection(row)


def index_type(conn: Conn, collection_id: int) -> str:
    return str(one(conn, "SELECT index_type FROM collections WHERE id = %s", (collection_id,)))


def create_collection(
    conn: Conn, name: str, *, fingerprint: str, model_id: str, dim: int, settings: dict[str, Any]
) -> Collection:
    """Create a collection and its HNSW index (caller's transaction)."""
    check_collection_name(name)
    kind = vector_index.index_type_for(int(dim))
    if conn.execute("SELECT 1 FROM collections WHERE name = %s", (name,)).fetchone():
        raise Conflict(f"collection {name!r} already exists", param="name")
    row = conn.execute(
        "INSERT INTO collections (name, fingerprint, model_id, dim, index_type, created, "
        "settings) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
        (name, fingerprint, model_id, int(dim), kind, now_iso(), json.dumps(settings or {})),
    ).fetchone()
    if row is None:  # another daemon created it a moment ago
        raise Conflict(f"collection {name!r} already exists", param="name")
    conn.execute(vector_index.create_index(int(row[0]), kind, int(dim)))
    return get_collection(conn, name)


def list_collections(conn: Conn) -> list[tuple[Collection, int, int]]:
    rows = conn.execute(
        f"SELECT {', '.join('c.' + c for c in COLLECTION_COLUMNS.split(', '))}, "
        "(SELECT count(*) FROM documents d WHERE d.collection_id = c.id), "
        "(SELECT count(*) FROM chunks k WHERE k.collection_id = c.id) "
        "FROM collections c ORDER BY c.name"
    ).fetchall()
    return [(_collection(r), int(r[10]), int(r[11])) for r in rows]


def delete_collection(conn: Conn, name: str) -> None:
    c = get_collection(conn, name, lock=True)
    conn.execute(vector_index.drop_index(c.id))
    conn.execute("DELETE FROM collections WHERE id = %s", (c.id,))
    conn.execute(
        "DELETE FROM jobs WHERE collection = %s AND state IN ('queued', 'running')", (name,)
    )
    conn.execute("DELETE FROM watches WHERE collection = %s", (name,))


def bump_generation(conn: Conn, collection_id: int) -> int:
    return int(
        one(
            conn,
            "UPDATE collections SET generation = generation + 1 WHERE id = %s RETURNING generation",
            (collection_id,),
        )
    )


def document_hashes(conn: Conn, collection_id: int, doc_ids: Sequence[str]) -> dict[str, str]:
    return {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT doc_id, content_hash FROM documents WHERE collection_id = %s "
            "AND doc_id = ANY(%s)",
            (collection_id, list(doc_ids)),
        )
    }


def number(value: int | float) -> Decimal:
    """A metadata number as `numeric`: exact for integers, the shortest repr for floats."""
    return Decimal(value) if isinstance(value, int) else Decimal(repr(float(value)))


def split_values(values: Sequence[Scalar]) -> tuple[list[str], list[Decimal]]:
    """Filter values as (strings, numbers): each compared with its own column."""
    strs = [v for v in values if isinstance(v, str)]
    nums = [number(v) for v in values if not isinstance(v, str)]
    return strs, nums


def _write_meta(conn: Conn, collection_id: int, doc_row: int, meta: dict[str, Any]) -> None:
    conn.execute("DELETE FROM doc_meta WHERE doc = %s", (doc_row,))
    rows = [
        (doc_row, collection_id, k, v, None)
        if isinstance(v, str)
        else (doc_row, collection_id, k, None, number(v))
        for k, v in metadata_rows(meta)
    ]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO doc_meta (doc, collection_id, key, str_value, num_value) "
                "VALUES (%s, %s, %s, %s, %s)",
                rows,
            )


CHUNK_TYPES = ("int8", "int8", "int4", "text", "int4", "int4", "int4", "int4", "int4", "vector")


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


def write_documents(
    conn: Conn, collection: Collection, docs: Sequence[PreparedDocument]
) -> list[WriteResult]:
    """Upsert documents inside the caller's transaction (the collection row is locked)."""
    bump_generation(conn, collection.id)
    results: list[WriteResult] = []
    stamp = now_iso()
    for d in docs:
        meta_json = json.dumps(d.metadata, ensure_ascii=False, sort_keys=True)
        row = conn.execute(
            "SELECT id, content_hash, metadata, source, "
            "(SELECT count(*) FROM chunks c WHERE c.doc = d.id) FROM documents d "
            "WHERE collection_id = %s AND doc_id = %s",
            (collection.id, d.doc_id),
        ).fetchone()
        if row is not None and (d.chunks is None or row[1] == d.content_hash):
            doc_row, n = int(row[0]), int(row[4])
            if row[1] == d.content_hash and json.loads(row[2]) == d.metadata and row[3] == d.source:
                results.append(WriteResult(d.doc_id, "unchanged", n))
                continue
            conn.execute(
                "UPDATE documents SET metadata = %s, source = %s, updated = %s WHERE id = %s",
                (meta_json, d.source, stamp, doc_row),
            )
            _write_meta(conn, collection.id, doc_row, d.metadata)
            results.append(WriteResult(d.doc_id, "metadata", n))
            continue
        chunks, vectors = d.content_for(collection)
        if row is None:
            doc_row = int(
                one(
                    conn,
                    "INSERT INTO documents (collection_id, doc_id, text, metadata, source, "
                    "content_hash, updated) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (collection.id, d.doc_id, d.text, meta_json, d.source, d.content_hash, stamp),
                )
            )
            status = "created"
        else:
            doc_row = int(row[0])
            conn.execute("DELETE FROM chunks WHERE doc = %s", (doc_row,))
            conn.execute(
                "UPDATE documents SET text = %s, metadata = %s, source = %s, content_hash = %s, "
                "updated = %s WHERE id = %s",
                (d.text, meta_json, d.source, d.content_hash, stamp, doc_row),
            )
            status = "updated"
        _write_meta(conn, collection.id, doc_row, d.metadata)
        if len(chunks):
            insert_chunks(conn, collection.id, doc_row, chunks, vectors)
        results.append(WriteResult(d.doc_id, status, len(chunks)))
    return results


def delete_documents(conn: Conn, collection: Collection, doc_ids: Sequence[str]) -> int:
    """Delete the named documents that exist (chunks, vectors and metadata cascade)."""
    bump_generation(conn, collection.id)
    rows = conn.execute(
        "DELETE FROM documents WHERE collection_id = %s AND doc_id = ANY(%s) RETURNING id",
        (collection.id, list(doc_ids)),
    ).fetchall()
    return len(rows)


_DOC_COLUMNS = (
    "d.id, d.doc_id, d.text, d.metadata, d.source, d.content_hash, d.updated, "
    "(SELECT count(*) FROM chunks c WHERE c.doc = d.id)"
)


def _doc(row: Any) -> StoredDocument:
    return StoredDocument(
        int(row[0]), row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], int(row[7])
    )


def get_document(
    conn: Conn, collection: Collection, doc_id: str
) -> tuple[StoredDocument, list[StoredChunk]]:
    row = conn.execute(
        f"SELECT {_DOC_COLUMNS} FROM documents d WHERE d.collection_id = %s AND d.doc_id = %s",
        (collection.id, doc_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"document {doc_id!r} not found in {collection.name!r}")
    doc = _doc(row)
    ids = [
        int(r[0])
        for r in conn.execute(
            "SELECT id FROM chunks WHERE doc = %s ORDER BY ordinal", (doc.row_id,)
        )
    ]
    return doc, fetch_chunks(conn, ids)


def list_documents(
    conn: Conn, collection: Collection, *, limit: int, after: str | None = None
) -> list[StoredDocument]:
    return [
        _doc(r)
        for r in conn.execute(
            f"SELECT {_DOC_COLUMNS} FROM documents d WHERE d.collection_id = %s "
            "AND d.doc_id > %s ORDER BY d.doc_id LIMIT %s",
            (collection.id, after or "", int(limit)),
        )
    ]


def fetch_chunks(conn: Conn, chunk_ids: Sequence[int]) -> list[StoredChunk]:
    if not len(chunk_ids):
        return []
    by_id: dict[int, StoredChunk] = {}
    for r in conn.execute(
        "SELECT c.id, c.doc, d.doc_id, d.source, c.ordinal, c.text, c.char_start, c.char_end, "
        "c.line_start, c.line_end, c.page, d.metadata FROM chunks c "
        "JOIN documents d ON d.id = c.doc WHERE c.id = ANY(%s)",
        ([int(i) for i in chunk_ids],),
    ):
        span = Chunk(r[4], r[5], r[6], r[7], r[8], r[9], r[10])
        by_id[int(r[0])] = StoredChunk(int(r[0]), int(r[1]), r[2], r[3], span, json.loads(r[11]))
    return [by_id[int(i)] for i in chunk_ids if int(i) in by_id]


def document_files(conn: Conn, collection: Collection, root: str) -> list[DocumentFile]:
    base = root.rstrip("/")
    # Under `base/`: every string from "base/" up to (not including) "base0" (byte order).
    return [
        DocumentFile(r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT doc_id, source, content_hash FROM documents WHERE collection_id = %s "
            "AND (source = %s OR (source >= %s AND source < %s)) ORDER BY source",
            (collection.id, base, base + "/", base + "0"),
        )
    ]


def export_documents(
    conn: Conn, collection: Collection, *, limit: int, after: str | None = None
) -> list[PreparedDocument]:
    docs = conn.execute(
        "SELECT id, doc_id, text, metadata, source, content_hash FROM documents "
        "WHERE collection_id = %s AND doc_id > %s ORDER BY doc_id LIMIT %s",
        (collection.id, after or "", int(limit)),
    ).fetchall()
    out: list[PreparedDocument] = []
    with conn.cursor(binary=True) as cur:
        for row in docs:
            rows = cur.execute(
                "SELECT ordinal, text, char_start, char_end, line_start, line_end, page, "
                "embedding FROM chunks WHERE doc = %s ORDER BY ordinal",
                (row[0],),
            ).fetchall()
            chunks = [Chunk(*r[:7]) for r in rows]
            vectors = (
                np.stack([r[7] for r in rows])
                if rows
                else np.empty((0, collection.dim), dtype=np.float32)
            )
            out.append(
                PreparedDocument(
                    row[1], row[2], json.loads(row[3]), row[4], row[5], chunks, vectors
                )
            )
    return out


# --- watched folders ---------------------------------------------------------------------

_WATCH_COLUMNS = "id, collection, root, options, created"


def _watch(row: Any) -> Watch:
    return Watch(int(row[0]), row[1], row[2], json.loads(row[3]), row[4])


def add_watch(conn: Conn, collection: str, root: str, options: dict[str, Any]) -> Watch:
    get_collection(conn, collection)
    row = conn.execute(
        "INSERT INTO watches (collection, root, options, created) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (collection, root) DO UPDATE SET options = excluded.options "
        f"RETURNING {_WATCH_COLUMNS}",
        (collection, root, json.dumps(options, sort_keys=True), now_iso()),
    ).fetchone()
    return _watch(row)


def list_watches(conn: Conn) -> list[Watch]:
    return [_watch(r) for r in conn.execute(f"SELECT {_WATCH_COLUMNS} FROM watches ORDER BY id")]


def remove_watch(conn: Conn, watch_id: int) -> Watch:
    row = conn.execute(
        f"DELETE FROM watches WHERE id = %s RETURNING {_WATCH_COLUMNS}", (int(watch_id),)
    ).fetchone()
    if row is None:
        raise NotFound(f"no watch with id {watch_id}", param="watch")
    return _watch(row)


def compose(query: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(query).format(**parts)
