"""PostgreSQL: the embedding cache, reindex staging and swap, and compaction."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from psycopg import Connection, sql

from localrank.store.postgres import vector_index
from localrank.store.postgres.db import Vec, one
from localrank.store.postgres.schema import TABLES
from localrank.store.records import Collection

Conn = Connection[Any]
KEEP_FINISHED_JOBS = 200


def text_hash(text: str) -> bytes:
    """The cache key's text part (as in the SQLite store)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


# --- the embedding cache ------------------------------------------------------------------


def cache_get(
    conn: Conn, fingerprint: str, texts: Sequence[str], dim: int
) -> dict[int, np.ndarray]:
    if not texts:
        return {}
    hashes = [text_hash(t) for t in texts]
    found = {
        bytes(r[0]): bytes(r[1])
        for r in conn.execute(
            "SELECT text_hash, embedding FROM embed_cache WHERE fingerprint = %s "
            "AND text_hash = ANY(%s)",
            (fingerprint, hashes),
        )
    }
    out: dict[int, np.ndarray] = {}
    for i, h in enumerate(hashes):
        blob = found.get(h)
        if blob is not None and len(blob) == dim * 4:
            out[i] = np.frombuffer(blob, dtype=np.float32)
    return out


def cache_put(conn: Conn, fingerprint: str, entries: Sequence[tuple[str, np.ndarray]]) -> None:
    if not entries:
        return
    now = time.time()
    # One row per text: ON CONFLICT cannot touch the same row twice in one statement.
    rows = {text_hash(t): np.asarray(v, dtype=np.float32).tobytes() for t, v in entries}
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO embed_cache (fingerprint, text_hash, embedding, used) "
            "VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (fingerprint, text_hash) DO UPDATE SET used = excluded.used",
            [(fingerprint, h, blob, now) for h, blob in rows.items()],
        )


def trim_cache(conn: Conn, max_rows: int) -> int:
    excess = int(one(conn, "SELECT count(*) FROM embed_cache")) - int(max_rows)
    if excess <= 0:
        return 0
    conn.execute(
        "DELETE FROM embed_cache WHERE (fingerprint, text_hash) IN "
        "(SELECT fingerprint, text_hash FROM embed_cache ORDER BY used LIMIT %s)",
        (excess,),
    )
    return excess


# --- reindex --------------------------------------------------------------------------------


def chunks_to_reindex(
    conn: Conn, collection_id: int, job_id: str, limit: int, *, after: int = 0
) -> list[tuple[int, str]]:
    return [
        (int(r[0]), r[1])
        for r in conn.execute(
            "SELECT c.id, c.text FROM chunks c WHERE c.collection_id = %s AND c.id > %s AND NOT "
            "EXISTS (SELECT 1 FROM reindex_vectors r WHERE r.job = %s AND r.chunk = c.id) "
            "ORDER BY c.id LIMIT %s",
            (collection_id, int(after), job_id, int(limit)),
        )
    ]


def stage_vectors(conn: Conn, job_id: str, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO reindex_vectors (job, chunk, embedding) VALUES (%s, %s, %s) "
            "ON CONFLICT (job, chunk) DO UPDATE SET embedding = excluded.embedding",
            [(job_id, int(c), Vec(vecs[i])) for i, c in enumerate(chunk_ids)],
        )


def swap_vectors(
    conn: Conn,
    collection: Collection,
    job_id: str,
    *,
    fingerprint: str,
    model_id: str,
    dim: int,
) -> bool:
    """Replace the collection's vectors by the staged ones and rebind it to the new model, with
    a new HNSW index when the dimension (and so possibly the index type) changes."""
    if conn.execute(
        "SELECT 1 FROM chunks c WHERE c.collection_id = %s AND NOT EXISTS "
        "(SELECT 1 FROM reindex_vectors r WHERE r.job = %s AND r.chunk = c.id) LIMIT 1",
        (collection.id, job_id),
    ).fetchone():
        return False
    kind = vector_index.index_type_for(int(dim))
    conn.execute(vector_index.drop_index(collection.id))
    conn.execute(
        "UPDATE chunks c SET embedding = r.embedding FROM reindex_vectors r "
        "WHERE r.job = %s AND r.chunk = c.id",
        (job_id,),
    )
    conn.execute("DELETE FROM reindex_vectors WHERE job = %s", (job_id,))
    conn.execute(vector_index.create_index(collection.id, kind, int(dim)))
    settings = dict(collection.settings)
    settings["reindexed_from"] = collection.model_id
    conn.execute(
        "UPDATE collections SET fingerprint = %s, model_id = %s, dim = %s, index_type = %s, "
        "settings = %s, epoch = epoch + 1, generation = generation + 1 WHERE id = %s",
        (fingerprint, model_id, int(dim), kind, json.dumps(settings), collection.id),
    )
    return True


# --- compaction ------------------------------------------------------------------------------


def store_bytes(conn: Conn) -> int:
    """On-disk size of the store's tables with their indexes and TOAST."""
    total = one(
        conn,
        "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM unnest(%s::text[]) t",
        (list(TABLES),),
    )
    return int(total)


def drop_old_jobs(conn: Conn) -> int:
    old = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed') "
            "ORDER BY created DESC, seq DESC OFFSET %s",
            (KEEP_FINISHED_JOBS,),
        )
    ]
    if old:
        conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (old,))
    # A failed job's pending items stay: they are what a retry resumes with.
    conn.execute(
        "DELETE FROM job_items WHERE state != 'pending' "
        "AND job IN (SELECT id FROM jobs WHERE state IN ('done', 'failed'))"
    )
    return len(old)


def vacuum_full() -> list[sql.Composed]:
    """VACUUM FULL of every table (rewrites them and rebuilds their indexes, HNSW included):
    what gives deleted rows' space back to the file system. It locks each table while it runs,
    which is why it is the explicit `compact` and not automatic (autovacuum reuses space)."""
    return [sql.SQL("VACUUM (FULL, ANALYZE) {}").format(sql.Identifier(t)) for t in TABLES]
