"""PostgreSQL statements: re-embedding a collection with another model (`engine.ReindexSQL`).
New vectors are staged per job, then swapped in with the new fingerprint in one transaction,
with a new HNSW index for the new dimension (and so possibly another index type)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from psycopg import Connection

from localrank.store.plans import ReindexTarget
from localrank.store.postgres import vector_index
from localrank.store.postgres.db import Vec
from localrank.store.records import Collection
from localrank.store.rows import Row

Conn = Connection[Any]


def chunks_to_reindex(
    conn: Conn, collection_id: int, job_id: str, limit: int, after: int
) -> list[Row]:
    return conn.execute(
        "SELECT c.id, c.text FROM chunks c WHERE c.collection_id = %s AND c.id > %s AND NOT "
        "EXISTS (SELECT 1 FROM reindex_vectors r WHERE r.job = %s AND r.chunk = c.id) "
        "ORDER BY c.id LIMIT %s",
        (collection_id, after, job_id, limit),
    ).fetchall()


def stage_vectors(conn: Conn, job_id: str, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO reindex_vectors (job, chunk, embedding) VALUES (%s, %s, %s) "
            "ON CONFLICT (job, chunk) DO UPDATE SET embedding = excluded.embedding",
            [(job_id, int(c), Vec(vecs[i])) for i, c in enumerate(chunk_ids)],
        )


def has_unstaged(conn: Conn, collection_id: int, job_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM chunks c WHERE c.collection_id = %s AND NOT EXISTS "
        "(SELECT 1 FROM reindex_vectors r WHERE r.job = %s AND r.chunk = c.id) LIMIT 1",
        (collection_id, job_id),
    ).fetchone()
    return row is not None


def swap_vectors(
    conn: Conn, collection: Collection, job_id: str, target: ReindexTarget, settings: str
) -> None:
    kind = vector_index.index_type_for(target.dim)
    conn.execute(vector_index.drop_index(collection.id))
    conn.execute(
        "UPDATE chunks c SET embedding = r.embedding FROM reindex_vectors r "
        "WHERE r.job = %s AND r.chunk = c.id",
        (job_id,),
    )
    conn.execute("DELETE FROM reindex_vectors WHERE job = %s", (job_id,))
    conn.execute(vector_index.create_index(collection.id, kind, target.dim))
    conn.execute(
        "UPDATE collections SET fingerprint = %s, model_id = %s, dim = %s, index_type = %s, "
        "settings = %s, epoch = epoch + 1, generation = generation + 1 WHERE id = %s",
        (target.fingerprint, target.model_id, target.dim, kind, settings, collection.id),
    )
