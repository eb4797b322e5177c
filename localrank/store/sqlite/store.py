"""`SQLiteStore`: the store protocol on one SQLite file with sqlite-vec (the laptop default).

Each method is one transaction (writes) or a read on this thread's connection; the work lives in
the sibling modules as functions of a connection (`catalog`, `jobs`, `cache`, `retrieve`,
`reindex`, `maintenance`), and the per-collection binary indexes in `vector_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import numpy as np

from localrank.store.filters import Filter
from localrank.store.health import FailureLog
from localrank.store.records import (
    Collection,
    CompactReport,
    DocumentFile,
    Job,
    JobItem,
    JobProgress,
    PreparedDocument,
    SearchReadiness,
    StoredChunk,
    StoredDocument,
    Watch,
    WriteResult,
    check_fingerprint,
)
from localrank.store.sqlite import cache, catalog, jobs, maintenance, reindex, retrieve, watches
from localrank.store.sqlite.db import BUSY_TIMEOUT_MS, Database, scalar
from localrank.store.sqlite.index_registry import IndexRegistry
from localrank.store.sqlite.schema import migrate

INDEX_INFO = {
    "engine": "sqlite",
    "vectors": "float32",
    "index": "binary codes scanned in memory",
    "rescoring": "exact cosine on the float32 vectors",
}


class SQLiteStore:
    """One database file, migrated on open, plus the per-collection vector indexes."""

    # A job's owner on this host is checked by pid; the heartbeat decides for other hosts.
    lease_seconds = jobs.STALE_SECONDS

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.db = Database(self.path, busy_timeout_ms=busy_timeout_ms)
        try:
            migrate(self.db)
        except BaseException:
            self.db.close()
            raise
        self.indexes = IndexRegistry(self.db)

    @property
    def failures(self) -> FailureLog:
        return self.db.failures

    def ping(self, timeout: float) -> None:
        self.db.ping()  # a stat of the file: never slow

    def close(self) -> None:
        """Stop a running preload, then close every connection."""
        self.indexes.stop()
        self.db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- collections --------------------------------------------------------------------

    def create_collection(
        self, name: str, *, fingerprint: str, model_id: str, dim: int, settings: dict[str, Any]
    ) -> Collection:
        return catalog.create_collection(
            self.db, name, fingerprint=fingerprint, model_id=model_id, dim=dim, settings=settings
        )

    def get_collection(self, name: str) -> Collection:
        return catalog.get_collection(self.db.reader(), name)

    def list_collections(self) -> list[tuple[Collection, int, int]]:
        return catalog.list_collections(self.db.reader())

    def delete_collection(self, name: str) -> None:
        catalog.delete_collection(self.db, name)

    # --- documents ----------------------------------------------------------------------

    def document_hashes(self, collection: Collection, doc_ids: Sequence[str]) -> dict[str, str]:
        return catalog.document_hashes(self.db.reader(), collection.id, doc_ids)

    def write_documents(
        self,
        collection_name: str,
        fingerprint: str,
        model_id: str,
        docs: Sequence[PreparedDocument],
        *,
        cache: Sequence[tuple[str, np.ndarray]] = (),
        progress: JobProgress | None = None,
    ) -> tuple[list[WriteResult], Job | None]:
        # One transaction: the documents, their new cache entries and the job's progress commit
        # together. That is what makes a job's resume exact.
        with self.db.write() as conn:
            current = catalog.get_collection(conn, collection_name)
            check_fingerprint(current, fingerprint, model_id)
            _cache_put(conn, fingerprint, cache)
            results = catalog.write_documents(conn, current, docs)
            if progress is None:
                return results, None
            jobs.record_progress(conn, progress.job_id, done=progress.done, failed=progress.failed)
            return results, jobs.get_job(conn, progress.job_id)

    def get_document(
        self, collection: Collection, doc_id: str
    ) -> tuple[StoredDocument, list[StoredChunk]]:
        return catalog.get_document(self.db.reader(), collection, doc_id)

    def list_documents(
        self, collection: Collection, *, limit: int, after: str | None = None
    ) -> list[StoredDocument]:
        return catalog.list_documents(self.db.reader(), collection, limit=limit, after=after)

    def delete_document(self, collection_name: str, doc_id: str) -> None:
        catalog.delete_document(self.db, collection_name, doc_id)

    def fetch_chunks(self, chunk_ids: Sequence[int]) -> list[StoredChunk]:
        return catalog.fetch_chunks(self.db.reader(), chunk_ids)

    def document_files(self, collection: Collection, root: str) -> list[DocumentFile]:
        return watches.document_files(self.db.reader(), collection, root)

    def delete_documents(self, collection_name: str, doc_ids: Sequence[str]) -> int:
        return watches.delete_documents(self.db, collection_name, doc_ids)

    def export_documents(
        self, collection: Collection, *, limit: int, after: str | None = None
    ) -> list[PreparedDocument]:
        with self.db.read() as conn:
            return catalog.export_documents(conn, collection, limit=limit, after=after)

    # --- watched folders ----------------------------------------------------------------

    def add_watch(self, collection: str, root: str, options: dict[str, Any]) -> Watch:
        return watches.add_watch(self.db, collection, root, options)

    def list_watches(self) -> list[Watch]:
        return watches.list_watches(self.db.reader())

    def remove_watch(self, watch_id: int) -> Watch:
        return watches.remove_watch(self.db, watch_id)

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

    # --- jobs ---------------------------------------------------------------------------

    def create_ingest_job(self, collection_name: str, items: Sequence[tuple[str, str]]) -> Job:
        with self.db.write() as conn:
            catalog.get_collection(conn, collection_name)
            job_id = jobs.create_job(conn, collection=collection_name, kind="ingest", items=items)
            return jobs.get_job(conn, job_id)

    def create_reindex_job(self, collection_name: str, params: dict[str, Any]) -> Job:
        with self.db.write() as conn:
            collection = catalog.get_collection(conn, collection_name)
            total = scalar(
                conn, "SELECT count(*) FROM chunks WHERE collection_id = ?", (collection.id,)
            )
            job_id = jobs.create_job(
                conn,
                collection=collection_name,
                kind="reindex",
                items=[],
                params=params,
                total=int(total),
            )
            return jobs.get_job(conn, job_id)

    def get_job(self, job_id: str) -> Job:
        return jobs.get_job(self.db.reader(), job_id)

    def list_jobs(self, *, limit: int = 50, state: str | None = None) -> list[Job]:
        return jobs.list_jobs(self.db.reader(), limit=limit, state=state)

    def claim_job(
        self, owner: str, *, skip: Sequence[str] = (), only: str | None = None
    ) -> Job | None:
        return jobs.claim_job(self.db, owner, skip=skip, only=only)

    def pending_items(self, job_id: str, limit: int, *, after: int = -1) -> list[JobItem]:
        return jobs.pending_items(self.db.reader(), job_id, limit, after=after)

    def finish_job(self, job_id: str, *, error: str | None = None) -> Job:
        with self.db.write() as conn:
            job = jobs.get_job(conn, job_id)
            failed = error is not None or (job.failed > 0 and job.done == 0)
            jobs.finish_job(conn, job_id, "failed" if failed else "done", error)
            return jobs.get_job(conn, job_id)

    def renew_job(self, job_id: str, owner: str) -> bool:
        return jobs.renew_job(self.db, job_id, owner)

    def requeue_job(self, job_id: str) -> None:
        jobs.requeue_job(self.db, job_id)

    def retry_job(self, job_id: str) -> Job:
        with self.db.write() as conn:
            jobs.retry_job(conn, job_id)
            return jobs.get_job(conn, job_id)

    def release_jobs(self, owner: str) -> None:
        jobs.release_jobs(self.db, owner)

    # --- reindex ------------------------------------------------------------------------

    def chunks_to_reindex(
        self, collection: Collection, job_id: str, limit: int, *, after: int = 0
    ) -> list[tuple[int, str]]:
        return reindex.chunks_to_reindex(
            self.db.reader(), collection.id, job_id, limit, after=after
        )

    def stage_reindexed(
        self,
        job_id: str,
        chunk_ids: Sequence[int],
        vectors: np.ndarray,
        *,
        fingerprint: str,
        cache: Sequence[tuple[str, np.ndarray]] = (),
    ) -> Job:
        with self.db.write() as conn:
            _cache_put(conn, fingerprint, cache)
            reindex.stage_vectors(conn, job_id, chunk_ids, vectors)
            jobs.record_progress(conn, job_id, done_count=len(chunk_ids))
            return jobs.get_job(conn, job_id)

    def swap_reindexed(self, collection_name: str, job_id: str) -> bool:
        with self.db.write() as conn:
            job = jobs.get_job(conn, job_id)
            current = catalog.get_collection(conn, collection_name)
            p = job.params
            swapped = reindex.swap_vectors(
                conn,
                current,
                job_id,
                fingerprint=p["fingerprint"],
                model_id=p["model_id"],
                dim=int(p["dim"]),
            )
            if swapped:
                jobs.finish_job(conn, job_id, "done")
            return swapped

    # --- cache and maintenance ----------------------------------------------------------

    def cache_get(self, fingerprint: str, texts: Sequence[str], dim: int) -> dict[int, np.ndarray]:
        return cache.cache_get(self.db.reader(), fingerprint, texts, dim)

    def trim_cache(self, max_rows: int) -> int:
        with self.db.write() as conn:
            return cache.trim_cache(conn, max_rows)

    def compact(self, *, cache_max_rows: int) -> CompactReport:
        return maintenance.compact(self.db, cache_max_rows=cache_max_rows)


def _cache_put(
    conn: apsw.Connection, fingerprint: str, entries: Sequence[tuple[str, np.ndarray]]
) -> None:
    if entries:
        cache.cache_put(
            conn, fingerprint, [t for t, _ in entries], np.stack([v for _, v in entries])
        )
