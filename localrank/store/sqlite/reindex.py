"""SQLite statements: re-embedding a collection with another model (`engine.ReindexSQL`). New
vectors (with their binary codes) are staged per job, then swapped in with the new fingerprint
in one transaction, so searches never see a mix of models."""

from __future__ import annotations

from collections.abc import Sequence

import apsw
import numpy as np

from localrank.store.plans import ReindexTarget
from localrank.store.records import Collection
from localrank.store.rows import Row
from localrank.store.sqlite.vector_index import quantize


def chunks_to_reindex(
    conn: apsw.Connection, collection_id: int, job_id: str, limit: int, after: int
) -> list[Row]:
    return conn.execute(
        "SELECT c.id, c.text FROM chunks c WHERE c.collection_id = ? AND c.id > ? AND NOT "
        "EXISTS (SELECT 1 FROM reindex_vectors r WHERE r.job = ? AND r.chunk = c.id) "
        "ORDER BY c.id LIMIT ?",
        (collection_id, after, job_id, limit),
    ).fetchall()


def stage_vectors(
    conn: apsw.Connection, job_id: str, chunk_ids: Sequence[int], vectors: np.ndarray
) -> None:
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    codes = quantize(vecs)
    conn.executemany(
        "INSERT OR REPLACE INTO reindex_vectors (job, chunk, embedding, code) VALUES (?, ?, ?, ?)",
        [(job_id, int(c), vecs[i].tobytes(), codes[i].tobytes()) for i, c in enumerate(chunk_ids)],
    )


def has_unstaged(conn: apsw.Connection, collection_id: int, job_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM chunks c WHERE c.collection_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM reindex_vectors r WHERE r.job = ? AND r.chunk = c.id) LIMIT 1",
        (collection_id, job_id),
    ).fetchone()
    return row is not None


def swap_vectors(
    conn: apsw.Connection,
    collection: Collection,
    job_id: str,
    target: ReindexTarget,
    settings: str,
) -> None:
    conn.execute(
        "DELETE FROM vectors WHERE chunk IN (SELECT id FROM chunks WHERE collection_id = ?)",
        (collection.id,),
    )
    conn.execute("DELETE FROM codes WHERE collection_id = ?", (collection.id,))
    conn.execute(
        "INSERT INTO vectors (chunk, embedding, code) "
        "SELECT chunk, embedding, code FROM reindex_vectors WHERE job = ?",
        (job_id,),
    )
    conn.execute(
        "INSERT INTO codes (chunk, collection_id, doc, code) "
        "SELECT r.chunk, c.collection_id, c.doc, r.code FROM reindex_vectors r "
        "JOIN chunks c ON c.id = r.chunk WHERE r.job = ?",
        (job_id,),
    )
    conn.execute("DELETE FROM reindex_vectors WHERE job = ?", (job_id,))
    conn.execute(
        "UPDATE collections SET fingerprint = ?, model_id = ?, dim = ?, settings = ?, "
        "epoch = epoch + 1, generation = generation + 1 WHERE id = ?",
        (target.fingerprint, target.model_id, target.dim, settings, collection.id),
    )
