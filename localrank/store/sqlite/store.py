"""`SQLiteStore`: the store protocol on one SQLite file with sqlite-vec (the laptop default).

`SQLStore` does the work with this engine's statements (`catalog`, `watches`, `jobs`, `reindex`,
`cache`, `maintenance`); what is SQLite's own is here: search over the per-collection binary
indexes held in memory (`index_registry`, `vector_index`) and FTS5 (`retrieve`), and VACUUM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import numpy as np

from localrank.store.engine import Statements
from localrank.store.filters import Filter
from localrank.store.records import Collection, SearchReadiness
from localrank.store.sql_store import SQLStore
from localrank.store.sqlite import cache, catalog, jobs, maintenance, reindex, retrieve, watches
from localrank.store.sqlite.db import BUSY_TIMEOUT_MS, Database
from localrank.store.sqlite.index_registry import IndexRegistry
from localrank.store.sqlite.schema import migrate

STATEMENTS: Statements[apsw.Connection] = Statements(
    catalog=catalog,
    watches=watches,
    jobs=jobs,
    reindex=reindex,
    cache=cache,
    maintenance=maintenance,
)
INDEX_INFO = {
    "engine": "sqlite",
    "vectors": "float32",
    "index": "binary codes scanned in memory",
    "rescoring": "exact cosine on the float32 vectors",
}


class SQLiteStore(SQLStore[apsw.Connection]):
    """One database file, migrated on open, plus the per-collection vector indexes."""

    db: Database
    # A job's owner on this host is checked by pid; the heartbeat decides for other hosts.
    lease_seconds = jobs.STALE_SECONDS

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        db = Database(self.path, busy_timeout_ms=busy_timeout_ms)
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        super().__init__(db, STATEMENTS)
        self.indexes = IndexRegistry(db)

    def close(self) -> None:
        """Stop a running preload, then close every connection."""
        self.indexes.stop()
        super().close()

    # --- retrieval ----------------------------------------------------------------------

    def _allowed(self, collection: Collection, flt: Filter | None) -> np.ndarray | None:
        if flt is None:
            return None
        return retrieve.allowed_documents(self.db.reader(), collection.id, flt)

    def keyword_candidates(
        self, collection: Collection, query: str, limit: int, flt: Filter | None = None
    ) -> list[tuple[int, float]]:
        return retrieve.keyword_candidates(
            self.db.reader(), collection.id, query, limit, self._allowed(collection, flt)
        )

    def vector_candidates(
        self,
        collection: Collection,
        query: np.ndarray,
        limit: int,
        *,
        candidates: int,
        flt: Filter | None = None,
    ) -> list[tuple[int, float]]:
        index = self.indexes.get(collection.id)
        if index is None:
            return []
        return retrieve.vector_candidates(
            self.db.reader(), index, query, limit, candidates, self._allowed(collection, flt)
        )

    def exact_scores(self, chunk_ids: Sequence[int], query: np.ndarray) -> dict[int, float]:
        return retrieve.exact_scores(self.db.reader(), chunk_ids, query)

    def index_info(self, collection: Collection) -> dict[str, Any]:
        return dict(INDEX_INFO)

    def prepare_search(self) -> None:
        self.indexes.preload()

    def search_readiness(self) -> SearchReadiness:
        return self.indexes.readiness()

    # --- maintenance --------------------------------------------------------------------

    def reclaim_space(self) -> None:
        """VACUUM rebuilds the tables compactly (vectors live in an ordinary table: there is no
        vec0 table to rebuild), then the WAL is emptied into the file."""
        self.db.execute_autocommit("VACUUM")
        self.db.execute_autocommit("PRAGMA wal_checkpoint(TRUNCATE)")
