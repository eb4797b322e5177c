"""The store protocol: everything `localrank.collections` asks of persistent storage.

A store holds collections (bound to an embedding fingerprint), their documents, chunks and
vectors, ingestion jobs, and a cache of vectors by text. It knows nothing of HTTP or models: it
takes and returns plain values (`records`) and numpy arrays. Every method is synchronous and
thread-safe; callers on an event loop run them in a worker thread. Each method that writes is
one transaction: it commits entirely or not at all.

What an implementation must guarantee, whatever its engine:
- a collection's vectors all come from one fingerprint: writes name the fingerprint they were
  embedded with and fail with ModelMismatch (409) if the collection was rebound meanwhile;
- a document upsert replaces the document's chunks and vectors in the same transaction as its
  row; unchanged text (same content hash) keeps its chunks;
- an acknowledged job is durable: `create_job` returns only after the job and every item's
  payload are committed, and `write_documents(..., job=...)` records the progress of
  those items in the same transaction as the documents, so a job resumes exactly after a crash;
- a job is run by one owner at a time (`claim_job`); a job whose owner died is claimable again
  (the owner holds it for `lease_seconds` at a time and renews that with `renew_job`; a lease
  left to expire is what frees the job of a daemon that died on another machine); marking a
  job's items done is idempotent, so two runners that both believed they held a job never count
  or store a document twice;
- filters apply inside candidate generation (never a top-k that is then filtered down);
- `vector_candidates` returns exact cosine scores (candidates may come from an approximate or
  quantised index, but are rescored against the full-precision vectors).

Implementations: `localrank.store.sqlite.SQLiteStore` (one SQLite file with sqlite-vec: the
laptop default) and `localrank.store.postgres.PostgresStore` (PostgreSQL + pgvector, shared by
several daemons), both `localrank.store.sql_store.SQLStore` over their engine's statements.
`tests/test_store.py` holds both to this contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

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
)


class Store(Protocol):
    """Persistent collections, documents, chunks, vectors, jobs and the embedding cache."""

    # How long a claimed job stays its owner's without a `renew_job` (or a progress write).
    lease_seconds: float

    # --- health -------------------------------------------------------------------------

    @property
    def failures(self) -> FailureLog:
        """The StoreUnavailable failures of this store's operations, recorded as they happen
        (reading it does no I/O)."""
        ...

    def ping(self, timeout: float) -> None:
        """Whether the database can be reached now, within about `timeout` seconds: returns, or
        raises StoreUnavailable with the reason. Blocking: callers on an event loop run it in a
        thread of its own (and do not wait for it past their own bound)."""
        ...

    # --- collections and fingerprints ---------------------------------------------------

    def create_collection(
        self, name: str, *, fingerprint: str, model_id: str, dim: int, settings: dict[str, Any]
    ) -> Collection:
        """Create a collection bound to an embedding fingerprint; Conflict if the name is taken,
        InvalidInput if it is not a valid name."""
        ...

    def get_collection(self, name: str) -> Collection:
        """The collection called `name`, or NotFound."""
        ...

    def list_collections(self) -> list[tuple[Collection, int, int]]:
        """Every collection with its document and chunk counts, by name."""
        ...

    def collection_fingerprints(self) -> list[str]:
        """The distinct fingerprints the collections are bound to, sorted, without counting
        anything (a model's load reads them to keep the precision its collections hold)."""
        ...

    def delete_collection(self, name: str) -> None:
        """Delete a collection with its documents, chunks, vectors, unfinished jobs and
        watches."""
        ...

    # --- documents and chunks -----------------------------------------------------------

    def document_hashes(self, collection: Collection, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc_id -> content hash, for the ids already stored."""
        ...

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
        """Upsert documents in one transaction, together with new cache entries (text, vector)
        and, for a job, the progress of its items. Returns what happened to each document and
        the job as it now stands (None without `progress`)."""
        ...

    def get_document(
        self, collection: Collection, doc_id: str
    ) -> tuple[StoredDocument, list[StoredChunk]]:
        """A document and its chunks in order, or NotFound."""
        ...

    def list_documents(
        self, collection: Collection, *, limit: int, after: str | None = None
    ) -> list[StoredDocument]:
        """Documents ordered by id, `limit` at a time after the id `after` (keyset paging)."""
        ...

    def fetch_chunks(self, chunk_ids: Sequence[int]) -> list[StoredChunk]:
        """Chunks with their document's id, source and metadata, in the order given."""
        ...

    def document_files(self, collection: Collection, root: str) -> list[DocumentFile]:
        """Documents whose `source` is the path `root` or lies under it (`root/...`), by
        source: what a folder's re-index, prune and watch compare against."""
        ...

    def delete_documents(self, collection_name: str, doc_ids: Sequence[str]) -> int:
        """Delete those of `doc_ids` that exist, in one transaction; returns how many (an id
        that is not there is no error: the caller that needs one says NotFound)."""
        ...

    def export_documents(
        self, collection: Collection, *, limit: int, after: str | None = None
    ) -> list[PreparedDocument]:
        """Documents ordered by id, `limit` at a time after the id `after`, each with its chunks
        and their full-precision vectors: what `write_documents` of another store takes, so a
        collection moves between stores without re-embedding (`localrank store migrate`)."""
        ...

    # --- watched folders ----------------------------------------------------------------

    def add_watch(self, collection: str, root: str, options: dict[str, Any]) -> Watch:
        """Register a folder to keep indexed into a collection (NotFound if the collection does
        not exist); registering the same pair again updates its options."""
        ...

    def list_watches(self) -> list[Watch]:
        """Every registered watch, oldest first."""
        ...

    def remove_watch(self, watch_id: int) -> Watch:
        """Unregister a watch (its documents stay); NotFound if there is none with that id."""
        ...

    # --- retrieval ----------------------------------------------------------------------

    def keyword_candidates(
        self, collection: Collection, query: str, limit: int, flt: Filter | None = None
    ) -> list[tuple[int, float]]:
        """(chunk id, keyword score; higher is better) of the best `limit` keyword matches."""
        ...

    def vector_candidates(
        self,
        collection: Collection,
        query: np.ndarray,
        limit: int,
        *,
        candidates: int,
        flt: Filter | None = None,
    ) -> list[tuple[int, float]]:
        """(chunk id, exact cosine) of the best `limit` chunks, best first. `candidates` is how
        many the first (approximate) stage keeps for exact rescoring."""
        ...

    def exact_scores(self, chunk_ids: Sequence[int], query: np.ndarray) -> dict[int, float]:
        """Exact cosine of each chunk's stored vector to the query."""
        ...

    def index_info(self, collection: Collection) -> dict[str, Any]:
        """How this store holds and searches a collection's vectors (engine, vector type, index,
        rescoring), for `GET /v1/collections/{name}`. No I/O."""
        ...

    def prepare_search(self) -> None:
        """Bring into memory what searches need (for SQLite: every collection's vector index),
        so the first search after a start is as fast as the rest. Blocking: the daemon runs it
        in a thread at startup. Searches that arrive meanwhile are answered correctly (they wait
        for their collection, or load it). `close()` stops it."""
        ...

    def search_readiness(self) -> SearchReadiness:
        """How far `prepare_search` got (cheap: no I/O, callable from an event loop)."""
        ...

    # --- jobs ---------------------------------------------------------------------------

    def create_job(
        self,
        collection_name: str,
        kind: str,
        *,
        items: Sequence[tuple[str, str]] = (),
        params: dict[str, Any] | None = None,
    ) -> Job:
        """Queue a job on a collection (NotFound if there is none); durable on return. `ingest`:
        with its items (doc_id, payload JSON), one each to do. `reindex`: re-embedding every
        chunk of the collection (that many to do), `params` naming the target fingerprint,
        model_id and dim."""
        ...

    def get_job(self, job_id: str) -> Job:
        """A job by id, or NotFound."""
        ...

    def list_jobs(self, *, limit: int = 50, state: str | None = None) -> list[Job]:
        """Most recent jobs first, optionally only those in `state`."""
        ...

    def claim_job(
        self, owner: str, *, skip: Sequence[str] = (), only: str | None = None
    ) -> Job | None:
        """Take the oldest unfinished job nobody live is working on (or one already ours);
        with `only`, that job or nothing."""
        ...

    def pending_items(self, job_id: str, limit: int, *, after: int = -1) -> list[JobItem]:
        """Up to `limit` pending items of a job with seq > `after`, in submission order."""
        ...

    def finish_job(self, job_id: str, *, error: str | None = None) -> Job:
        """Close a job: failed when `error` is given or when every item failed, else done."""
        ...

    def renew_job(self, job_id: str, owner: str) -> bool:
        """Extend `owner`'s lease on a running job; False when the job is no longer its own
        (finished, or taken over by another runner after the lease expired)."""
        ...

    def retry_job(self, job_id: str) -> Job:
        """Queue a failed job again (NotFound if there is none, Conflict unless it failed): it
        resumes where it stopped, at its first pending item (a reindex: at its first chunk with
        no staged vector). The job's own errors are dropped, its documents' failures stay."""
        ...

    def release_jobs(self, owner: str, *, only: str | None = None) -> None:
        """Hand `owner`'s running jobs (with `only`, that one) back to the queue, so they are
        claimed again at once (by another runner, or this one later): on clean shutdown, or
        when a job cannot run here now. A job that is no longer `owner`'s is left alone."""
        ...

    # --- reindex ------------------------------------------------------------------------

    def chunks_to_reindex(
        self, collection: Collection, job_id: str, limit: int, *, after: int = 0
    ) -> list[tuple[int, str]]:
        """(chunk id, text) with id > `after` that have no new vector staged for this job."""
        ...

    def stage_reindexed(
        self,
        job_id: str,
        chunk_ids: Sequence[int],
        vectors: np.ndarray,
        *,
        fingerprint: str,
        cache: Sequence[tuple[str, np.ndarray]] = (),
    ) -> Job:
        """Stage new vectors for chunks (and cache entries), recording the job's progress."""
        ...

    def swap_reindexed(self, collection_name: str, job_id: str) -> bool:
        """Swap the staged vectors in and rebind the collection to the job's model, in one
        transaction, finishing the job. False (nothing changed) if a chunk still lacks one."""
        ...

    # --- cache and maintenance ----------------------------------------------------------

    def cache_get(self, fingerprint: str, texts: Sequence[str], dim: int) -> dict[int, np.ndarray]:
        """Positions in `texts` whose vectors are cached, with those vectors."""
        ...

    def trim_cache(self, max_rows: int) -> int:
        """Drop the least recently written cache rows beyond `max_rows`; returns how many."""
        ...

    def compact(self, *, cache_max_rows: int) -> CompactReport:
        """Reclaim what deletes left behind, trim old jobs and the cache."""
        ...

    def close(self) -> None:
        """Stop a running `prepare_search` and release connections."""
        ...
