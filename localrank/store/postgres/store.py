"""`PostgresStore`: the store protocol on PostgreSQL + pgvector, shared by several daemons.

Each method is one transaction (writes) or one statement on a pooled connection (reads); the
work lives in the sibling modules as functions of a connection (`catalog`, `jobs`, `retrieve`,
`maintenance`). A lost server makes the method raise StoreUnavailable (503); the pool checks
connections before handing them out, so the next call after the server is back succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from localrank.errors import NotFound, StoreError
from localrank.store.filters import Filter
from localrank.store.health import FailureLog
from localrank.store.postgres import catalog, jobs, maintenance, retrieve, vector_index
from localrank.store.postgres.db import Database, one
from localrank.store.postgres.schema import migrate
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

DEFAULT_LEASE_SECONDS = 30.0


class PostgresStore:
    """One PostgreSQL database (pgvector installed), migrated on open."""

    def __init__(self, url: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.url = url
        self.lease_seconds = float(lease_seconds)
        self.db = Database(url)
        try:
            migrate(self.db)
        except BaseException:
            self.db.close()
            raise
        self._readiness = SearchReadiness(ready=False, loaded=0, total=0)

    @property
    def where(self) -> str:
        """The database URL without its password."""
        return self.db.where

    @property
    def failures(self) -> FailureLog:
        return self.db.failures

    def ping(self, timeout: float) -> None:
        self.db.ping(timeout)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- collections --------------------------------------------------------------------

    def create_collection(
        self, name: str, *, fingerprint: str, model_id: str, dim: int, settings: dict[str, Any]
    ) -> Collection:
        with self.db.write() as conn:
            return catalog.create_collection(
                conn, name, fingerprint=fingerprint, model_id=model_id, dim=dim, settings=settings
            )

    def get_collection(self, name: str) -> Collection:
        with self.db.connection() as conn:
            return catalog.get_collection(conn, name)

    def list_collections(self) -> list[tuple[Collection, int, int]]:
        with self.db.connection() as conn:
            return catalog.list_collections(conn)

    def delete_collection(self, name: str) -> None:
        with self.db.write() as conn:
            catalog.delete_collection(conn, name)

    # --- documents ----------------------------------------------------------------------

    def document_hashes(self, collection: Collection, doc_ids: Sequence[str]) -> dict[str, str]:
        with self.db.connection() as conn:
            return catalog.document_hashes(conn, collection.id, doc_ids)

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
        # One transaction: the documents, their cache entries and the job's progress.
        with self.db.write() as conn:
            current = catalog.get_collection(conn, collection_name, lock=True)
            check_fingerprint(current, fingerprint, model_id)
            maintenance.cache_put(conn, fingerprint, cache)
            results = catalog.write_documents(conn, current, docs)
            if progress is None:
                return results, None
            jobs.record_progress(
                conn,
                progress.job_id,
                self.lease_seconds,
                done=progress.done,
                failed=progress.failed,
            )
            return results, jobs.get_job(conn, progress.job_id)

    def get_document(
        self, collection: Collection, doc_id: str
    ) -> tuple[StoredDocument, list[StoredChunk]]:
        with self.db.connection() as conn:
            return catalog.get_document(conn, collection, doc_id)

    def list_documents(
        self, collection: Collection, *, limit: int, after: str | None = None
    ) -> list[StoredDocument]:
        with self.db.connection() as conn:
            return catalog.list_documents(conn, collection, limit=limit, after=after)

    def delete_document(self, collection_name: str, doc_id: str) -> None:
        with self.db.write() as conn:
            c = catalog.get_collection(conn, collection_name, lock=True)
            if catalog.delete_documents(conn, c, [doc_id]) == 0:
                raise NotFound(f"document {doc_id!r} not found in {collection_name!r}")

    def fetch_chunks(self, chunk_ids: Sequence[int]) -> list[StoredChunk]:
        with self.db.connection() as conn:
            return catalog.fetch_chunks(conn, chunk_ids)

    def document_files(self, collection: Collection, root: str) -> list[DocumentFile]:
        with self.db.connection() as conn:
            return catalog.document_files(conn, collection, root)

    def delete_documents(self, collection_name: str, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        with self.db.write() as conn:
            c = catalog.get_collection(conn, collection_name, lock=True)
            return catalog.delete_documents(conn, c, doc_ids)

    def export_documents(
        self, collection: Collection, *, limit: int, after: str | None = None
    ) -> list[PreparedDocument]:
        with self.db.connection() as conn, conn.transaction():
            return catalog.export_documents(conn, collection, limit=limit, after=after)

    # --- watched folders ----------------------------------------------------------------

    def add_watch(self, collection: str, root: str, options: dict[str, Any]) -> Watch:
        with self.db.write() as conn:
            return catalog.add_watch(conn, collection, root, options)

    def list_watches(self) -> list[Watch]:
        with self.db.connection() as conn:
            return catalog.list_watches(conn)

    def remove_watch(self, watch_id: int) -> Watch:
        with self.db.write() as conn:
            return catalog.remove_watch(conn, watch_id)

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

    # --- jobs ---------------------------------------------------------------------------

    def create_ingest_job(self, collection_name: str, items: Sequence[tuple[str, str]]) -> Job:
        with self.db.write() as conn:
            catalog.get_collection(conn, collection_name)
            job_id = jobs.create_job(conn, collection=collection_name, kind="ingest", items=items)
            return jobs.get_job(conn, job_id)

    def create_reindex_job(self, collection_name: str, params: dict[str, Any]) -> Job:
        with self.db.write() as conn:
            c = catalog.get_collection(conn, collection_name)
            total = one(conn, "SELECT count(*) FROM chunks WHERE collection_id = %s", (c.id,))
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
        with self.db.connection() as conn:
            return jobs.get_job(conn, job_id)

    def list_jobs(self, *, limit: int = 50, state: str | None = None) -> list[Job]:
        with self.db.connection() as conn:
            return jobs.list_jobs(conn, limit=limit, state=state)

    def claim_job(
        self, owner: str, *, skip: Sequence[str] = (), only: str | None = None
    ) -> Job | None:
        with self.db.write() as conn:
            return jobs.claim_job(conn, owner, self.lease_seconds, skip=skip, only=only)

    def renew_job(self, job_id: str, owner: str) -> bool:
        with self.db.write() as conn:
            return jobs.renew_job(conn, job_id, owner, self.lease_seconds)

    def pending_items(self, job_id: str, limit: int, *, after: int = -1) -> list[JobItem]:
        with self.db.connection() as conn:
            return jobs.pending_items(conn, job_id, limit, after=after)

    def finish_job(self, job_id: str, *, error: str | None = None) -> Job:
        with self.db.write() as conn:
            job = jobs.get_job(conn, job_id)
            failed = error is not None or (job.failed > 0 and job.done == 0)
            jobs.finish_job(conn, job_id, "failed" if failed else "done", error)
            return jobs.get_job(conn, job_id)

    def requeue_job(self, job_id: str) -> None:
        with self.db.write() as conn:
            jobs.requeue_job(conn, job_id)

    def retry_job(self, job_id: str) -> Job:
        with self.db.write() as conn:
            jobs.retry_job(conn, job_id)
            return jobs.get_job(conn, job_id)

    def release_jobs(self, owner: str) -> None:
        with self.db.write() as conn:
            jobs.release_jobs(conn, owner)

    # --- reindex ------------------------------------------------------------------------

    def chunks_to_reindex(
        self, collection: Collection, job_id: str, limit: int, *, after: int = 0
    ) -> list[tuple[int, str]]:
        with self.db.connection() as conn:
            return maintenance.chunks_to_reindex(conn, collection.id, job_id, limit, after=after)

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
            maintenance.cache_put(conn, fingerprint, cache)
            maintenance.stage_vectors(conn, job_id, chunk_ids, vectors)
            jobs.record_progress(conn, job_id, self.lease_seconds, done_count=len(chunk_ids))
            return jobs.get_job(conn, job_id)

    def swap_reindexed(self, collection_name: str, job_id: str) -> bool:
        with self.db.write() as conn:
            job = jobs.get_job(conn, job_id)
            current = catalog.get_collection(conn, collection_name, lock=True)
            p = job.params
            swapped = maintenance.swap_vectors(
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
        with self.db.connection() as conn:
            return maintenance.cache_get(conn, fingerprint, texts, dim)

    def trim_cache(self, max_rows: int) -> int:
        with self.db.write() as conn:
            return maintenance.trim_cache(conn, max_rows)

    def compact(self, *, cache_max_rows: int) -> CompactReport:
        with self.db.write() as conn:
            before = maintenance.store_bytes(conn)
            trimmed = maintenance.trim_cache(conn, cache_max_rows)
            removed = maintenance.drop_old_jobs(conn)
            conn.execute("UPDATE collections SET epoch = epoch + 1")
        with self.db.connection() as conn:  # autocommit: VACUUM runs outside a transaction
            for stmt in maintenance.vacuum_full():
                conn.execute(stmt)
            after = maintenance.store_bytes(conn)
        return CompactReport(before, after, 0, trimmed, removed)
