"""SQLite: collections, documents and chunks. Reads take a connection, writes run inside
`db.write()`.

Upsert is delete-then-insert of the document's chunks and vectors in the caller's transaction.
Every write that removes chunks first bumps the collection's generation and records the
removed ids in `tombstones`, so in-memory indexes (this process's or another's) catch up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import apsw
import numpy as np

from localrank.errors import Conflict, NotFound
from localrank.store.filters import metadata_rows
from localrank.store.records import (
    Chunk,
    Collection,
    PreparedDocument,
    StoredChunk,
    StoredDocument,
    WriteResult,
    check_collection_name,
)
from localrank.store.sqlite.db import Database, now_iso, scalar
from localrank.store.sqlite.vector_index import quantize

COLLECTION_COLUMNS = "id, name, fingerprint, model_id, dim, created, settings, generation, epoch"


def get_collection(conn: apsw.Connection, name: str) -> Collection:
    """The collection called `name`, or NotFound."""
    row = conn.execute(
        f"SELECT {COLLECTION_COLUMNS} FROM collections WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NotFound(f"collection {name!r} does not exist", param="collection")
    return _collection(row)


def _collection(row: Any) -> Collection:
    return Collection(
        id=row[0],
        name=row[1],
        fingerprint=row[2],
        model_id=row[3],
        dim=row[4],
        created=row[5],
        settings=json.loads(row[6]),
        generation=row[7],
        epoch=row[8],
    )


def create_collection(
    db: Database,
    name: str,
    *,
    fingerprint: str,
    model_id: str,
    dim: int,
    settings: dict[str, Any] | None = None,
) -> Collection:
    """Create a collection bound to an embedding fingerprint; Conflict if the name is taken."""
    check_collection_name(name)
    with db.write() as conn:
        if conn.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone():
            raise Conflict(f"collection {name!r} already exists", param="name")
        conn.execute(
            "INSERT INTO collections (name, fingerprint, model_id, dim, created, settings) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, fingerprint, model_id, int(dim), now_iso(), json.dumps(settings or {})),
        )
        return get_collection(conn, name)


def list_collections(conn: apsw.Connection) -> list[tuple[Collection, int, int]]:
    """Every collection with its document and chunk counts."""
    out = []
    for row in conn.execute(f"SELECT {COLLECTION_COLUMNS} FROM collections ORDER BY name"):
        out.append(_collection(row))
    result = []
    for c in out:
        docs = scalar(conn, "SELECT count(*) FROM documents WHERE collection_id = ?", (c.id,))
        chunks = scalar(conn, "SELECT count(*) FROM chunks WHERE collection_id = ?", (c.id,))
        result.append((c, int(docs), int(chunks)))
    return result


def delete_collection(db: Database, name: str) -> None:
    """Delete a collection with its documents, chunks, vectors and pending jobs."""
    with db.write() as conn:
        c = get_collection(conn, name)
        conn.execute("DELETE FROM collections WHERE id = ?", (c.id,))
        conn.execute("DELETE FROM tombstones WHERE collection_id = ?", (c.id,))
        conn.execute(
            "DELETE FROM jobs WHERE collection = ? AND state IN ('queued', 'running')", (name,)
        )
        conn.execute("DELETE FROM watches WHERE collection = ?", (name,))


def bump_generation(conn: apsw.Connection, collection_id: int) -> int:
    """Mark the start of a change to a collection's chunks; returns the new generation."""
    return int(
        scalar(
            conn,
            "UPDATE collections SET generation = generation + 1 WHERE id = ? RETURNING generation",
            (collection_id,),
        )
    )


def document_hashes(
    conn: apsw.Connection, collection_id: int, doc_ids: Sequence[str]
) -> dict[str, str]:
    """doc_id -> content hash for the ids already stored."""
    return {
        row[0]: row[1]
        for row in conn.execute(
            "SELECT doc_id, content_hash FROM documents "
            "WHERE collection_id = ? AND doc_id IN (SELECT value FROM json_each(?))",
            (collection_id, json.dumps(list(doc_ids))),
        )
    }


def remove_chunks(conn: apsw.Connection, collection_id: int, doc_row: int, gen: int) -> None:
    """Delete a document's chunks (and, by cascade, vectors), leaving tombstones at `gen`."""
    conn.execute(
        "INSERT INTO tombstones (collection_id, chunk, generation) "
        "SELECT collection_id, id, ? FROM chunks WHERE doc = ?",
        (gen, doc_row),
    )
    conn.execute("DELETE FROM chunks WHERE doc = ?", (doc_row,))


def _write_meta(conn: apsw.Connection, collection_id: int, doc_row: int, meta: dict) -> None:
    conn.execute("DELETE FROM doc_meta WHERE doc = ?", (doc_row,))
    conn.executemany(
        "INSERT INTO doc_meta (doc, collection_id, key, value) VALUES (?, ?, ?, ?)",
        [(doc_row, collection_id, k, v) for k, v in metadata_rows(meta)],
    )


def write_documents(
    conn: apsw.Connection, collection: Collection, docs: Sequence[PreparedDocument]
) -> list[WriteResult]:
    """Upsert documents inside the caller's write transaction."""
    gen = bump_generation(conn, collection.id)
    results: list[WriteResult] = []
    stamp = now_iso()
    for d in docs:
        meta_json = json.dumps(d.metadata, ensure_ascii=False, sort_keys=True)
        row: Any = conn.execute(
            "SELECT id, content_hash, metadata, source FROM documents "
            "WHERE collection_id = ? AND doc_id = ?",
            (collection.id, d.doc_id),
        ).fetchone()
        if row is not None and (d.chunks is None or row[1] == d.content_hash):
            doc_row = int(row[0])
            n = int(scalar(conn, "SELECT count(*) FROM chunks WHERE doc = ?", (doc_row,)))
            if row[1] == d.content_hash and json.loads(row[2]) == d.metadata and row[3] == d.source:
                results.append(WriteResult(d.doc_id, "unchanged", n))
                continue
            conn.execute(
                "UPDATE documents SET metadata = ?, source = ?, updated = ? WHERE id = ?",
                (meta_json, d.source, stamp, doc_row),
            )
            _write_meta(conn, collection.id, doc_row, d.metadata)
            results.append(WriteResult(d.doc_id, "metadata", n))
            continue
        chunks, vectors = d.content_for(collection)
        if row is None:
            doc_row = int(
                scalar(
                    conn,
                    "INSERT INTO documents (collection_id, doc_id, text, metadata, source, "
                    "content_hash, updated) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (collection.id, d.doc_id, d.text, meta_json, d.source, d.content_hash, stamp),
                )
            )
            status = "created"
        else:
            doc_row = int(row[0])
            remove_chunks(conn, collection.id, doc_row, gen)
            conn.execute(
                "UPDATE documents SET text = ?, metadata = ?, source = ?, content_hash = ?, "
                "updated = ? WHERE id = ?",
                (d.text, meta_json, d.source, d.content_hash, stamp, doc_row),
            )
            status = "updated"
        _write_meta(conn, collection.id, doc_row, d.metadata)
        insert_chunks(conn, collection.id, doc_row, chunks, vectors)
        results.append(WriteResult(d.doc_id, status, len(chunks)))
    return results


def insert_chunks(
    conn: apsw.Connection,
    collection_id: int,
    doc_row: int,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
) -> None:
    """Insert chunk rows and their float32 vectors + binary codes (caller's transaction)."""
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    codes = quantize(vecs) if len(vecs) else np.empty((0, 0), dtype=np.uint8)
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


def delete_document(db: Database, collection_name: str, doc_id: str) -> None:
    """Delete one document (NotFound if absent)."""
    with db.write() as conn:
        c = get_collection(conn, collection_name)
        row = conn.execute(
            "SELECT id FROM documents WHERE collection_id = ? AND doc_id = ?", (c.id, doc_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"document {doc_id!r} not found in {collection_name!r}")
        gen = bump_generation(conn, c.id)
        remove_chunks(conn, c.id, int(row[0]), gen)
        conn.execute("DELETE FROM documents WHERE id = ?", (row[0],))


_DOC_COLUMNS = (
    "d.id, d.doc_id, d.text, d.metadata, d.source, d.content_hash, d.updated, "
    "(SELECT count(*) FROM chunks c WHERE c.doc = d.id)"
)


def _doc(row: tuple[Any, ...]) -> StoredDocument:
    return StoredDocument(
        row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], int(row[7])
    )


def get_document(
    conn: apsw.Connection, collection: Collection, doc_id: str
) -> tuple[StoredDocument, list[StoredChunk]]:
    """A document and its chunks in order, or NotFound."""
    row = conn.execute(
        f"SELECT {_DOC_COLUMNS} FROM documents d WHERE d.collection_id = ? AND d.doc_id = ?",
        (collection.id, doc_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"document {doc_id!r} not found in {collection.name!r}")
    doc = _doc(row)
    ids = [
        r[0]
        for r in conn.execute("SELECT id FROM chunks WHERE doc = ? ORDER BY ordinal", (doc.row_id,))
    ]
    return doc, fetch_chunks(conn, ids)


def list_documents(
    conn: apsw.Connection, collection: Collection, *, limit: int = 100, after: str | None = None
) -> list[StoredDocument]:
    """Documents ordered by id, `limit` at a time after the id `after` (keyset paging)."""
    return [
        _doc(r)
        for r in conn.execute(
            f"SELECT {_DOC_COLUMNS} FROM documents d WHERE d.collection_id = ? AND d.doc_id > ? "
            "ORDER BY d.doc_id LIMIT ?",
            (collection.id, after or "", int(limit)),
        )
    ]


def fetch_chunks(conn: apsw.Connection, chunk_ids: Sequence[int]) -> list[StoredChunk]:
    """Chunks with their document's id, source and metadata, in the order of `chunk_ids`."""
    if not len(chunk_ids):
        return []
    by_id: dict[int, StoredChunk] = {}
    r: Any
    for r in conn.execute(
        "SELECT c.id, c.doc, d.doc_id, d.source, c.ordinal, c.text, c.char_start, c.char_end, "
        "c.line_start, c.line_end, c.page, d.metadata FROM chunks c "
        "JOIN documents d ON d.id = c.doc WHERE c.id IN (SELECT value FROM json_each(?))",
        (json.dumps([int(i) for i in chunk_ids]),),
    ):
        span = Chunk(r[4], r[5], r[6], r[7], r[8], r[9], r[10])
        by_id[r[0]] = StoredChunk(r[0], r[1], r[2], r[3], span, json.loads(r[11]))
    return [by_id[int(i)] for i in chunk_ids if int(i) in by_id]


def export_documents(
    conn: apsw.Connection, collection: Collection, *, limit: int, after: str | None = None
) -> list[PreparedDocument]:
    """A page of documents (by id, after `after`) with their chunks and float32 vectors, as
    `write_documents` takes them: a collection copied to another store is not re-embedded."""
    out: list[PreparedDocument] = []
    docs: list[Any] = conn.execute(
        "SELECT id, doc_id, text, metadata, source, content_hash FROM documents "
        "WHERE collection_id = ? AND doc_id > ? ORDER BY doc_id LIMIT ?",
        (collection.id, after or "", int(limit)),
    ).fetchall()
    for row in docs:
        rows: list[Any] = conn.execute(
            "SELECT c.ordinal, c.text, c.char_start, c.char_end, c.line_start, c.line_end, "
            "c.page, v.embedding FROM chunks c JOIN vectors v ON v.chunk = c.id "
            "WHERE c.doc = ? ORDER BY c.ordinal",
            (row[0],),
        ).fetchall()
        chunks = [Chunk(*r[:7]) for r in rows]
        vectors = (
            np.frombuffer(b"".join(r[7] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            if rows
            else np.empty((0, collection.dim), dtype=np.float32)
        )
        out.append(
            PreparedDocument(
                row[1], row[2], json.loads(row[3]), row[4], row[5], chunks, vectors.copy()
            )
        )
    return out
