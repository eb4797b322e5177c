"""`SQLStore`: the store protocol implemented once, over an engine's connections and statements
(`engine`). SQLite and PostgreSQL subclass it with their own search, compaction and start-up;
everything else (which transaction, in which order, what it decides) is here, composed of the
`steps` that run inside a transaction, with the decisions themselves in `plans`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from localrank.errors import Conflict, NotFound
from localrank.store import rows, steps
from localrank.store.engine import C, Database, Statements
from localrank.store.health import FailureLog
from localrank.store.plans import (
    KEEP_FINISHED_JOBS,
    ReindexTarget,
    cached_vectors,
    check_job_kind,
    reindexed_settings,
    retry_errors,
    source_range,
    text_hash,
)
from localrank.store.records import (
    Collection,
    CompactReport,
    DocumentFile,
    Job,
    JobItem,
    JobProgress,
    PreparedDocument,
    StoredChunk,
    StoredDocument,
    Watch,
    WriteResult,
    check_collection_name,
    check_fingerprint,
    refuse_nul,
    refuse_nul_in_metadata,
)

S = TypeVar("S", bound="SQLStore[Any]")


class SQLStore(Generic[C]):
    """Collections, documents, watches, jobs, reindex and the cache on one engine's database.

    A subclass opens `db`, migrates it, and adds what its engine does its own way: retrieval
    (`keyword_candidates`, `vector_candidates`, `exact_scores`, `index_info`, `prepare_search`,
    `search_readiness`) and `reclaim_space`.
    """

    # How long a claimed job stays its owner's without a `renew_job` (or a progress write).
    lease_seconds: float

    def __init__(self, db: Database[C], sql: Statements[C]) -> None:
        self.db = db
        self.sql = sql

    @property
    def failures(self) -> FailureLog:
        return self.db.failures

    def ping(self, timeout: float) -> None:
        self.db.ping(timeout)

    def close(self) -> None:
        self.db.close()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- collections --------------------------------------------------------------------

    def create_collection(
        self, name: str, *, fingerprint: str, model_id: str, dim: int, settings: dict[str, Any]
    ) -> Collection:
        check_collection_name(name)
        with self.db.write() as conn:
            created = self.sql.catalog.insert_collection(
                conn, name, fingerprint, model_id, int(dim), json.dumps(settings or {})
            )
            if not created:
                raise Conflict(f"collection {name!r} already exists", param="name")
            return steps.read_collection(self.sql.catalog, conn, name)

    def get_collection(self, name: str) -> Collection:
        with self.db.connection() as conn:
            return steps.read_collection(self.sql.catalog, conn, name)

    def list_collections(self) -> list[tuple[Collection, int, int]]:
        with self.db.connection() as conn:
            return [rows.listed_collection(r) for r in self.sql.catalog.collection_rows(conn)]

    def collection_fingerprints(self) -> list[str]:
        with self.db.connection() as conn:
            return self.sql.catalog.fingerprints(conn)

    def delete_collection(self, name: str) -> None:
        with self.db.write() as conn:
            self.sql.catalog.delete_collection(
                conn, steps.read_collection(self.sql.catalog, conn, name, lock=True)
            )

    # --- documents ----------------------------------------------------------------------

    def document_hashes(self, collection: Collection, doc_ids: Sequence[str]) -> dict[str, str]:
        with self.db.connection() as conn:
            return dict(self.sql.catalog.document_hashes(conn, collection.id, doc_ids))

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
        for d in docs:
            refuse_nul([d.doc_id, d.source or "", d.text], f"document {d.doc_id!r}")
            refuse_nul_in_metadata(d.metadata, f"document {d.doc_id!r} metadata")
        # One transaction: the documents, their new cache entries and the job's progress commit
        # together. That is what makes a job's resume exact.
        with self.db.write() as conn:
            current = steps.read_collection(self.sql.catalog, conn, collection_name, lock=True)
            check_fingerprint(current, fingerprint, model_id)
            steps.cache_put(self.sql.cache, conn, fingerprint, cache)
            results = steps.upsert_documents(self.sql.catalog, conn, current, docs)
            if progress is None:
                return results, None
            steps.record_progress(
                self.sql.jobs,
                conn,
                progress.job_id,
                self.lease_seconds,
                done=progress.done,
                failed=progress.failed,
            )
            return results, steps.read_job(self.sql.jobs, conn, progress.job_id)

    def get_document(
        self, collection: Collection, doc_id: str
    ) -> tuple[StoredDocument, list[StoredChunk]]:
        refuse_nul(doc_id, "document id", param="doc_id")
        with self.db.connection() as conn:
            row = self.sql.catalog.document_row(conn, collection.id, doc_id)
            if row is None:
                raise NotFound(f"document {doc_id!r} not found in {collection.name!r}")
            doc = rows.document(row)
            ids = self.sql.catalog.chunk_ids(conn, doc.row_id)
            return doc, steps.chunks(self.sql.catalog, conn, ids)

    def list_documents(
        self, collection: Collection, *, limit: int, after: str | None = None
    ) -> list[StoredDocument]:
        refuse_nul(after or "", "after", param="after")
        with self.db.connection() as conn:
            found = self.sql.catalog.document_rows(conn, collection.id, int(limit), after or "")
            return [rows.document(r) for r in found]

    def fetch_chunks(self, chunk_ids: Sequence[int]) -> list[StoredChunk]:
        with self.db.connection() as conn:
            return steps.chunks(self.sql.catalog, conn, chunk_ids)

    def document_files(self, collection: Collection, root: str) -> list[DocumentFile]:
        refuse_nul(root, "source", param="source")
        with self.db.connection() as conn:
            found = self.sql.catalog.file_rows(conn, collection.id, source_range(root))
            return [rows.document_file(r) for r in found]

    def delete_documents(self, collection_name: str, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        refuse_nul(list(doc_ids), "document id", param="doc_id")
        with self.db.write() as conn:
            c = steps.read_collection(self.sql.catalog, conn, collection_name, lock=True)
            generation = self.sql.catalog.bump_generation(conn, c.id)
            return self.sql.catalog.delete_documents(conn, c.id, doc_ids, generation)

    def export_documents(
        self, collection: Collection, *, limit: int, after: str | None = None
    ) -> list[PreparedDocument]:
        sql = self.sql.catalog
        with self.db.read() as conn:
            out = []
            for row in sql.export_rows(conn, collection.id, int(limit), after or ""):
                spans, vectors = sql.spans_and_vectors(conn, int(row[0]))
                out.append(rows.exported(row, spans, vectors, collection.dim))
            return out

    # --- watched folders ----------------------------------------------------------------

    def add_watch(self, collection: str, root: str, options: dict[str, Any]) -> Watch:
        refuse_nul(root, "watch path", param="path")
        with self.db.write() as conn:
            steps.read_collection(self.sql.catalog, conn, collection)
            options_json = json.dumps(options, sort_keys=True)
            return rows.watch(self.sql.watches.upsert_watch(conn, collection, root, options_json))

    def list_watches(self) -> list[Watch]:
        with self.db.connection() as conn:
            return [rows.watch(r) for r in self.sql.watches.watch_rows(conn)]

    def remove_watch(self, watch_id: int) -> Watch:
        with self.db.write() as conn:
            row = self.sql.watches.delete_watch(conn, int(watch_id))
            if row is None:
                raise NotFound(f"no watch with id {watch_id}", param="watch")
            return rows.watch(row)

    # --- jobs ---------------------------------------------------------------------------

    def create_job(
        self,
        collection_name: str,
        kind: str,
        *,
        items: Sequence[tuple[str, str]] = (),
        params: dict[str, Any] | None = None,
    ) -> Job:
        with self.db.write() as conn:
            c = steps.read_collection(self.sql.catalog, conn, collection_name)
            if check_job_kind(kind) == "reindex":
                total = self.sql.catalog.count_chunks(conn, c.id)
            else:
                total = len(items)
            return steps.create_job(self.sql.jobs, conn, c.name, kind, items, params or {}, total)

    def get_job(self, job_id: str) -> Job:
        with self.db.connection() as conn:
            return steps.read_job(self.sql.jobs, conn, job_id)

    def list_jobs(self, *, limit: int = 50, state: str | None = None) -> list[Job]:
        with self.db.connection() as conn:
            return [rows.job(r) for r in self.sql.jobs.job_rows(conn, int(limit), state)]

    def claim_job(
        self, owner: str, *, skip: Sequence[str] = (), only: str | None = None
    ) -> Job | None:
        with self.db.write() as conn:
            row = self.sql.jobs.claim_job(conn, owner, self.lease_seconds, list(skip), only)
            return None if row is None else rows.job(row)

    def pending_items(self, job_id: str, limit: int, *, after: int = -1) -> list[JobItem]:
        with self.db.connection() as conn:
            found = self.sql.jobs.pending_items(conn, job_id, int(limit), int(after))
            return [rows.job_item(r) for r in found]

    def finish_job(self, job_id: str, *, error: str | None = None) -> Job:
        with self.db.write() as conn:
            return steps.finish_job(self.sql.jobs, conn, job_id, error=error)

    def renew_job(self, job_id: str, owner: str) -> bool:
        with self.db.write() as conn:
            return self.sql.jobs.renew_job(conn, job_id, owner, self.lease_seconds)

    def retry_job(self, job_id: str) -> Job:
        with self.db.write() as conn:
            errors = retry_errors(steps.read_job(self.sql.jobs, conn, job_id, lock=True))
            self.sql.jobs.requeue_failed(conn, job_id, json.dumps(errors))
            return steps.read_job(self.sql.jobs, conn, job_id)

    def release_jobs(self, owner: str, *, only: str | None = None) -> None:
        with self.db.write() as conn:
            self.sql.jobs.release_jobs(conn, owner, only)

    # --- reindex ------------------------------------------------------------------------

    def chunks_to_reindex(
        self, collection: Collection, job_id: str, limit: int, *, after: int = 0
    ) -> list[tuple[int, str]]:
        with self.db.connection() as conn:
            found = self.sql.reindex.chunks_to_reindex(
                conn, collection.id, job_id, int(limit), int(after)
            )
            return [(int(r[0]), r[1]) for r in found]

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
            steps.cache_put(self.sql.cache, conn, fingerprint, cache)
            self.sql.reindex.stage_vectors(conn, job_id, chunk_ids, vectors)
            steps.record_progress(
                self.sql.jobs, conn, job_id, self.lease_seconds, done_count=len(chunk_ids)
            )
            return steps.read_job(self.sql.jobs, conn, job_id)

    def swap_reindexed(self, collection_name: str, job_id: str) -> bool:
        with self.db.write() as conn:
            target = ReindexTarget.from_params(steps.read_job(self.sql.jobs, conn, job_id).params)
            current = steps.read_collection(self.sql.catalog, conn, collection_name, lock=True)
            if self.sql.reindex.has_unstaged(conn, current.id, job_id):
                return False
            settings = json.dumps(reindexed_settings(current))
            self.sql.reindex.swap_vectors(conn, current, job_id, target, settings)
            self.sql.jobs.close_job(conn, job_id, "done")
            return True

    # --- the embedding cache ------------------------------------------------------------

    def cache_get(self, fingerprint: str, texts: Sequence[str], dim: int) -> dict[int, np.ndarray]:
        if not texts:
            return {}
        hashes = [text_hash(t) for t in texts]
        with self.db.connection() as conn:
            found = self.sql.cache.cache_lookup(conn, fingerprint, hashes)
        return cached_vectors(hashes, found, dim)

    def trim_cache(self, max_rows: int) -> int:
        with self.db.write() as conn:
            return steps.trim_cache(self.sql.cache, conn, max_rows)

    # --- maintenance --------------------------------------------------------------------

    def compact(self, *, cache_max_rows: int) -> CompactReport:
        m = self.sql.maintenance
        with self.db.write() as conn:
            before = m.store_bytes(conn)
            tombstones = m.drop_tombstones(conn)
            # In-memory indexes anywhere reload instead of missing a deletion whose tombstone
            # is gone.
            m.bump_epochs(conn)
            trimmed = steps.trim_cache(self.sql.cache, conn, cache_max_rows)
            removed = m.drop_old_jobs(conn, KEEP_FINISHED_JOBS)
            m.optimize(conn)
        self.reclaim_space()
        with self.db.connection() as conn:
            after = m.store_bytes(conn)
        return CompactReport(before, after, tombstones, trimmed, removed)

    def reclaim_space(self) -> None:
        """Give the space deletes left behind back to the file system, outside a transaction
        (SQLite: VACUUM; PostgreSQL: VACUUM FULL). Each engine's own."""
        raise NotImplementedError
