"""Each collection's HNSW index: which pgvector type it uses, its DDL, and its query expression.

pgvector's HNSW indexes `vector` up to 2,000 dimensions, `halfvec` up to 4,000 and `bit` up to
64,000; a `vector` column holds up to 16,000. So (`index_type`):
- up to 2,000-d (Qwen3-Embedding-0.6B: 1024-d): `vector`, float32 in the graph: the index's
  distances are already exact;
- 2,001..4,000-d (Qwen3-Embedding-4B: 2,560-d): `halfvec`, float16 in the graph (half the
  size; ranks almost like float32), candidates rescored against the float32 vectors;
- 4,001..16,000-d (Qwen3-Embedding-8B: 4,096-d): binary codes (`binary_quantize`, one bit per
  dimension) with a Hamming HNSW graph, candidates rescored exactly: 32x smaller, coarser, so it
  needs more candidates for the same recall;
- above 16,000: refused (InvalidInput, 422): pgvector cannot store the vector.

One partial index per collection (`WHERE collection_id = N`) over an expression that fixes the
dimension, on the shared `chunks` table. Statements name the collection id and dimension as
literals (they come from the database, composed with psycopg.sql, never from a request) so the
planner matches the partial index whatever the plan cache does.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from localrank.errors import InvalidInput

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
MAX_EF_SEARCH = 1000  # pgvector's limit
LIMITS = (("vector", 2000), ("halfvec", 4000), ("bit", 16000))
VECTOR_MAX_DIM = 16000


def index_type_for(dim: int) -> str:
    """The index type a collection of `dim` dimensions gets; InvalidInput beyond pgvector."""
    for name, limit in LIMITS:
        if dim <= limit:
            return name
    raise InvalidInput(
        f"the PostgreSQL store holds vectors of at most {VECTOR_MAX_DIM} dimensions (pgvector); "
        f"this model has {dim}: use a model with fewer dimensions (or Matryoshka `dimensions`), "
        "or the SQLite store",
        param="dim",
    )


def index_name(collection_id: int) -> sql.Identifier:
    return sql.Identifier(f"chunks_hnsw_{int(collection_id)}")


def key_expr(index_type: str, dim: int) -> sql.Composable:
    """The indexed expression over `embedding` (also what ORDER BY must say to use it)."""
    d = sql.Literal(int(dim))
    if index_type == "vector":
        return sql.SQL("(embedding::vector({}))").format(d)
    if index_type == "halfvec":
        return sql.SQL("(embedding::halfvec({}))").format(d)
    return sql.SQL("(binary_quantize(embedding)::bit({}))").format(d)


def distance_expr(index_type: str, dim: int) -> sql.Composable:
    """`key <op> %s` (the query vector, one positional parameter), in the index's metric."""
    d = sql.Literal(int(dim))
    key = key_expr(index_type, dim)
    if index_type == "vector":
        return sql.SQL("{} <=> %s::vector({})").format(key, d)
    if index_type == "halfvec":
        return sql.SQL("{} <=> %s::halfvec({})").format(key, d)
    return sql.SQL("{} <~> binary_quantize(%s::vector({}))::bit({})").format(key, d, d)


def create_index(collection_id: int, index_type: str, dim: int) -> sql.Composed:
    ops = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops", "bit": "bit_hamming_ops"}
    return sql.SQL(
        "CREATE INDEX {} ON chunks USING hnsw ({} {}) WITH (m = {}, ef_construction = {}) "
        "WHERE collection_id = {}"
    ).format(
        index_name(collection_id),
        key_expr(index_type, dim),
        sql.SQL(ops[index_type]),
        sql.Literal(HNSW_M),
        sql.Literal(HNSW_EF_CONSTRUCTION),
        sql.Literal(int(collection_id)),
    )


def drop_index(collection_id: int) -> sql.Composed:
    return sql.SQL("DROP INDEX IF EXISTS {}").format(index_name(collection_id))


def describe(index_type: str, dim: int) -> dict[str, Any]:
    """What `GET /v1/collections/{name}` says about the index."""
    detail = {
        "vector": "float32 vectors in the graph: exact distances",
        "halfvec": "float16 vectors in the graph, candidates rescored on float32",
        "bit": "binary codes (1 bit per dimension) in a Hamming graph, candidates rescored "
        "on float32",
    }[index_type]
    return {
        "engine": "postgresql",
        "vectors": "float32 (pgvector vector)",
        "index": f"hnsw on {index_type}({dim})",
        "index_type": index_type,
        "detail": detail,
        "rescoring": "exact cosine on the float32 vectors",
    }
