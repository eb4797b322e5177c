"""`PostgresStore`: the store protocol on PostgreSQL + pgvector, shared by several daemons.

`SQLStore` does the work with this engine's statements (`catalog`, `watches`, `jobs`, `reindex`,
`cache`, `maintenance`), each write one transaction and each read one statement on a pooled
connection; what is PostgreSQL's own is here: search through each collection's HNSW index and
`tsvector` (`retrieve`), and VACUUM FULL. A lost server makes a method raise StoreUnavailable
(503); the pool checks connections before handing them out, so the next call after the server
is back succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from localrank.errors import StoreError
from localrank.store.engine import Statements
from localrank.store.filters import Filter
from localrank.store.postgres import (
    cache,
    catalog,
    jobs,
    maintenance,
    reindex,
    retrieve,
    vector_index,
    watches,
)
from localrank.store.postgres.db import Database, one
from localrank.store.postgres.schema import migrate
from localrank.store.records import Collection, SearchReadiness
from localrank.store.sql_store import SQLStore

DEFAULT_LEASE_SECONDS = 30.0
STATEMENTS: Statements[psycopg.Connection[Any]] = Statements(
    catalog=catalog,
    watches=watches,
    jobs=jobs,
    reindex=reindex,
    cache=cache,
    maintenance=maintenance,
)


class PostgresStore(SQLStore[psycopg.Connection[Any]]):
    """One PostgreSQL database (pgvector installed), migrated on open."""

    db: Database

    def __init__(self, url: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.url = url
        self.lease_seconds = float(lease_seconds)
        db = Database(url)
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        super().__init__(db, STATEMENTS)
        self._readiness = SearchReadiness(ready=False, loaded=0, total=0)

    @property
    def where(self) -> str:
        """The database URL without its password."""
        return self.db.where

    # --- retrieval ----------------------------------------------------------------------

    def keyword_candidates(
        self, collection: Collection, query: str, limit: int, flt: Filter | None = None
    ) -> list[tuple[int, float]]:
        with self.db.connection() as conn:
            return retrieve.keyword_candidates(conn, collection, query, limit, flt)

    def vector_candidates(
        self,
        collection: Collection,
        query: np.ndarray,
        limit: int,
        *,
        candidates: int,
        flt: Filter | None = None,
    ) -> list[tuple[int, float]]:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT index_type, dim FROM collections WHERE id = %s", (collection.id,)
            ).fetchone()
            if row is None or int(row[1]) != collection.dim:
                return []  # deleted, or rebound to a model of other dimensions meanwhile
            return retrieve.vector_candidates(
                conn, collection, str(row[0]), query, limit, candidates, flt
            )

    def exact_scores(self, chunk_ids: Sequence[int], query: np.ndarray) -> dict[int, float]:
        with self.db.connection() as conn:
            return retrieve.exact_scores(conn, chunk_ids, query)

    def index_info(self, collection: Collection) -> dict[str, Any]:
        return vector_index.describe(vector_index.index_type_for(collection.dim), collection.dim)

    def prepare_search(self) -> None:
        """Nothing to load into this process: the HNSW indexes live in the server, which keeps
        them in its buffers. Reports every collection ready once the database answers."""
        try:
            with self.db.connection() as conn:
                total = int(one(conn, "SELECT count(*) FROM collections"))
        except StoreError as exc:
            self._readiness = SearchReadiness(False, 0, 0, error=exc.message)
            return
        self._readiness = SearchReadiness(True, total, total)

    def search_readiness(self) -> SearchReadiness:
        return self._readiness

    # --- maintenance --------------------------------------------------------------------

    def reclaim_space(self) -> None:
        with self.db.connection() as conn:  # autocommit: VACUUM runs outside a transaction
            for stmt in maintenance.vacuum_full():
                conn.execute(stmt)
