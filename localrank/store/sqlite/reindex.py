"""Re-embedding a collection with another model: new vectors are staged per job, then swapped
in with the new fingerprint in one transaction, so searches never see a mix of models."""

from __future__ import annotations

import json
from collections.abc import Sequence

import apsw
import numpy as np

from localrank.store.records import Collection
from localrank.store.sqlite.vector_index import quantize


def chunks_to_reindex(
    conn: apsw.Connection, collection_id: int, job_id: str, limit: int, *, after: int = 0
) -> list[tuple[int, str]]:
    """(chunk id, text) of chunks with id > `after` that have no staged vector for this job."""
    return [
        (int(r[0]), r[1])
        for r in conn.execute(
            "SELECT c.id, c.text FROM chunks c WHERE c.collection_id = ? AND c.id > ? AND NOT "
            "EXISTS (SELECT 1 FROM reindex_vectors r WHERE r.job = ? AND r.chunk = c.id) "
            "ORDER BY c.id LIMIT ?",
            (collection_id, int(after), job_id, int(limit)),
        )
    ]


def stage_vectors(
    conn: apsw.Connection, job_id: str, chunk_ids: Sequence[int], vectors: np.ndarray
) -> None:
    """Store new vectors for chunks (caller's write transaction)."""
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    codes = quantize(vecs)
    conn.executemany(
        "INSERT OR REPLACE INTO reindex_vectors (job, chunk, embedding, code) VALUES (?, ?, ?, ?)",
        [(job_id, int(c), vecs[i].tobytes(), codes[i].tobytes()) for i, c in enumerate(chunk_ids)],
    )


def swap_vectors(
    conn: apsw.Connection,
    collection: Collection,
    job_id: str,
    *,
    fingerprint: str,
    model_id: str,
    dim: int,
) -> bool:
    """Replace the collection's vectors by the staged ones and rebind it to the new model.

    Returns False (and changes nothing) if some chunk still lacks a staged vector.
    """
    if conn.execute(
        "SELECT 1 FROM chunks c WHERE c.collection_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM reindex_vectors r WHERE r.job = ? AND r.chunk = c.id) LIMIT 1",
        (collection.id, job_id),
    ).fetchone():
        return False
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
    settings = dict(collection.settings)
    settings["reindexed_from"] = collection.model_id
    conn.execute(
        "UPDATE collections SET fingerprint = ?, model_id = ?, dim = ?, settings = ?, "
        "epoch = epoch + 1, generation = generation + 1 WHERE id = ?",
        (fingerprint, model_id, int(dim), json.dumps(settings), collection.id),
    )
    return True
