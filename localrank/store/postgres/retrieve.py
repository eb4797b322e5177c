"""PostgreSQL retrieval over one collection: keyword candidates (`tsvector` + GIN, `ts_rank`),
vector candidates (the collection's HNSW index, then exact cosine on the float32 vectors), and
metadata filters inside both.

A filter is part of the same statement as the ranking. Vector search with a filter picks one of
two plans by how many chunks the filter leaves (one indexed count):
- few (<= EXACT_SCAN_ROWS): an exact scan of those chunks (no index): exact top-k, fast;
- more: the HNSW index with pgvector's iterative scan (`hnsw.iterative_scan`), which keeps
  walking the graph until enough rows pass the filter; if it still comes back short (the
  filter is rare in the graph's neighbourhood), the exact scan answers instead.
Either way the top-k is never one found first and filtered down afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from psycopg import Connection, sql

from localrank.store.filters import Filter
from localrank.store.plans import query_words
from localrank.store.postgres import vector_index
from localrank.store.postgres.catalog import split_values
from localrank.store.postgres.db import Vec, one
from localrank.store.records import Collection

Conn = Connection[Any]
EXACT_SCAN_ROWS = 20_000
# How many rows an iterative index scan may visit before it gives up (pgvector's default).
MAX_SCAN_TUPLES = 20_000


def ts_query(text: str) -> str | None:
    """A safe `to_tsquery` text for free text: each word a quoted lexeme, ORed (as SQLite's
    FTS5 query). None without words."""
    words = query_words(text)
    if not words:
        return None
    return " | ".join(f"'{w}'" for w in words)


def filter_clause(collection_id: int, flt: Filter | None) -> tuple[sql.Composable, list[Any]]:
    """`AND c.doc IN (...)` per filter term (ANDed), with its parameters."""
    if flt is None:
        return sql.SQL(""), []
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for key, values in flt.terms:
        strs, nums = split_values(values)
        parts.append(
            sql.SQL(
                " AND c.doc IN (SELECT m.doc FROM doc_meta m WHERE m.collection_id = {} "
                "AND m.key = %s AND (m.str_value = ANY(%s) OR m.num_value = ANY(%s)))"
            ).format(sql.Literal(int(collection_id)))
        )
        params += [key, strs, nums]
    return sql.Composed(parts), params


def keyword_candidates(
    conn: Conn, collection: Collection, query: str, limit: int, flt: Filter | None = None
) -> list[tuple[int, float]]:
    q = ts_query(query)
    if q is None:
        return []
    where, params = filter_clause(collection.id, flt)
    stmt = sql.SQL(
        "SELECT c.id, ts_rank(c.tsv, q) AS s FROM chunks c, to_tsquery('simple', %s) q "
        "WHERE c.collection_id = {} AND c.tsv @@ q{} ORDER BY s DESC, c.id LIMIT %s"
    ).format(sql.Literal(collection.id), where)
    rows = conn.execute(stmt, [q, *params, int(limit)]).fetchall()
    return [(int(r[0]), float(r[1])) for r in rows]


def vector_candidates(
    conn: Conn,
    collection: Collection,
    index_type: str,
    query: np.ndarray,
    limit: int,
    candidates: int,
    flt: Filter | None = None,
) -> list[tuple[int, float]]:
    """(chunk id, exact cosine), best first: `candidates` from the index, rescored exactly."""
    q = Vec(query)
    if q.array.shape[0] != collection.dim:
        raise ValueError(f"query has {q.array.shape[0]} dimensions, vectors have {collection.dim}")
    where, fparams = filter_clause(collection.id, flt)
    k = max(int(candidates), int(limit))
    if flt is not None:
        allowed = one(
            conn,
            sql.SQL("SELECT count(*) FROM chunks c WHERE c.collection_id = {}{}").format(
                sql.Literal(collection.id), where
            ),
            fparams,
        )
        if allowed == 0:
            return []
        if allowed <= EXACT_SCAN_ROWS:
            return _exact_scan(conn, collection, q, limit, where, fparams)
    ef = min(vector_index.MAX_EF_SEARCH, max(k, 40))
    # A `vector` graph holds the float32 vectors, and without a filter the index scan returns
    # its ef_search list in exact distance order: its first `limit` rows already are the
    # rescored top `limit` of the `k` candidates. Fetching all `k` to rescore them would read
    # each one's vector out of TOAST (4 KB at 1024-d) for nothing: at 200k x 1024-d, 400
    # candidates, p95 81 ms against ~20 ms (bench/pg_bench.py). halfvec and bit graphs rank
    # approximately, and a filtered (iterative, relaxed-order) scan may return rows slightly out
    # of order: those rescore all `k`.
    fetch = int(limit) if index_type == "vector" and flt is None else k
    stmt = sql.SQL(
        "SELECT id, 1 - (embedding <=> %s) AS score FROM ("
        "SELECT c.id, c.embedding FROM chunks c WHERE c.collection_id = {}{} "
        "ORDER BY {} LIMIT %s) s ORDER BY score DESC, id LIMIT %s"
    ).format(
        sql.Literal(collection.id),
        where,
        vector_index.distance_expr(index_type, collection.dim),
    )
    with conn.transaction():
        # The planner costs a sequential scan far below what it is here (each 1024-d vector is
        # TOASTed: ~110 ms per 10k rows measured, against a few ms through the graph), and
        # would pick it for small collections: these steer it to the HNSW index (a plan with a
        # scan + sort has more disabled nodes than the index walk, so it loses).
        for name in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute("SELECT set_config(%s, 'off', true)", (name,))
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
        if flt is not None:
            conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
            conn.execute(
                "SELECT set_config('hnsw.max_scan_tuples', %s, true)", (str(MAX_SCAN_TUPLES),)
            )
        rows = conn.execute(stmt, [q, *fparams, q, fetch, int(limit)]).fetchall()
    if flt is not None and len(rows) < min(int(limit), int(allowed)):
        return _exact_scan(conn, collection, q, limit, where, fparams)
    return [(int(r[0]), float(r[1])) for r in rows]


def _exact_scan(
    conn: Conn,
    collection: Collection,
    q: Vec,
    limit: int,
    where: sql.Composable,
    params: list[Any],
) -> list[tuple[int, float]]:
    stmt = sql.SQL(
        "SELECT c.id, 1 - (c.embedding <=> %s) AS score FROM chunks c "
        "WHERE c.collection_id = {}{} ORDER BY c.embedding <=> %s, c.id LIMIT %s"
    ).format(sql.Literal(collection.id), where)
    rows = conn.execute(stmt, [q, *params, q, int(limit)]).fetchall()
    return [(int(r[0]), float(r[1])) for r in rows]


def exact_scores(conn: Conn, chunk_ids: Sequence[int], query: np.ndarray) -> dict[int, float]:
    if not len(chunk_ids):
        return {}
    rows = conn.execute(
        "SELECT id, 1 - (embedding <=> %s) FROM chunks WHERE id = ANY(%s)",
        (Vec(query), [int(i) for i in chunk_ids]),
    ).fetchall()
    return {int(r[0]): float(r[1]) for r in rows}
