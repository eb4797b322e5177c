"""What a database engine supplies to `sql_store.SQLStore`: its connections (`Database`) and its
statements, grouped as the engine's modules are (`catalog`, `watches`, `jobs`, `reindex`,
`cache`, `maintenance`). Each statement is a function of a connection (`C`: the driver's); it
runs SQL and returns rows (`rows` turns them into records) or plain values. Every decision
(what an upsert does, when a job has failed, what is NotFound) is made by the caller, once for
every engine.

Writes run inside the caller's transaction (`Database.write()`). `lock=True` asks to hold a row
for the rest of the transaction where the engine lets several writers in at once (PostgreSQL:
`FOR UPDATE`); SQLite's write transaction already holds the whole database.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from localrank.store.filters import Scalar
from localrank.store.health import FailureLog
from localrank.store.plans import ReindexTarget
from localrank.store.records import Chunk, Collection, PreparedDocument
from localrank.store.rows import Row

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)
C_co = TypeVar("C_co", covariant=True)


class Database(Protocol[C_co]):
    """An engine's connections."""

    # StoreUnavailable failures as they happen (what /health reads without I/O).
    failures: FailureLog

    def connection(self) -> AbstractContextManager[C_co]:
        """A connection for reads of one statement each (no transaction)."""
        ...

    def read(self) -> AbstractContextManager[C_co]:
        """A connection in a read transaction: several statements, one view of the data."""
        ...

    def write(self) -> AbstractContextManager[C_co]:
        """One write transaction: committed at the end of the block, rolled back on error."""
        ...

    def ping(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class CatalogSQL(Protocol[C_contra]):
    """Collections, documents, their filter values and chunks."""

    def collection_row(self, conn: C_contra, name: str, *, lock: bool = False) -> Row | None:
        """COLLECTION_COLUMNS of the collection called `name`."""
        ...

    def collection_rows(self, conn: C_contra) -> list[Row]:
        """COLLECTION_COLUMNS, then document and chunk counts, of every collection by name."""
        ...

    def fingerprints(self, conn: C_contra) -> list[str]:
        """The distinct fingerprints collections are bound to, sorted."""
        ...

    def insert_collection(
        self, conn: C_contra, name: str, fingerprint: str, model_id: str, dim: int, settings: str
    ) -> bool:
        """A new collection (with whatever index the engine gives it); False if the name is
        taken."""
        ...

    def delete_collection(self, conn: C_contra, collection: Collection) -> None:
        """A collection, everything in it, its unfinished jobs and its watches."""
        ...

    def bump_generation(self, conn: C_contra, collection_id: int) -> int:
        """Mark the start of a change to a collection's chunks; the new generation."""
        ...

    def count_chunks(self, conn: C_contra, collection_id: int) -> int: ...

    def document_hashes(
        self, conn: C_contra, collection_id: int, doc_ids: Sequence[str]
    ) -> list[Row]:
        """(doc_id, content_hash) of those of `doc_ids` that are stored."""
        ...

    def stored_state(self, conn: C_contra, collection_id: int, doc_id: str) -> Row | None:
        """STORED_STATE_COLUMNS of a document."""
        ...

    def insert_document(
        self, conn: C_contra, collection_id: int, doc: PreparedDocument, metadata: str, stamp: str
    ) -> int:
        """A new document row (its text, metadata, source, hash); its row id."""
        ...

    def update_metadata(
        self, conn: C_contra, doc_row: int, metadata: str, source: str | None, stamp: str
    ) -> None: ...

    def update_content(
        self, conn: C_contra, doc_row: int, doc: PreparedDocument, metadata: str, stamp: str
    ) -> None:
        """A document row's text, metadata, source and hash."""
        ...

    def remove_chunks(
        self, conn: C_contra, collection_id: int, doc_row: int, generation: int
    ) -> None:
        """A document's chunks and their vectors (SQLite leaves tombstones at `generation`)."""
        ...

    def write_filter_values(
        self, conn: C_contra, collection_id: int, doc_row: int, values: list[tuple[str, Scalar]]
    ) -> None:
        """A document's filter values (`filters.metadata_rows`), replacing those it had."""
        ...

    def insert_chunks(
        self,
        conn: C_contra,
        collection_id: int,
        doc_row: int,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
    ) -> None:
        """A document's chunks with their float32 vectors, one row per chunk."""
        ...

    def delete_documents(
        self, conn: C_contra, collection_id: int, doc_ids: Sequence[str], generation: int
    ) -> int:
        """Those of `doc_ids` that exist, with their chunks; how many."""
        ...

    def document_row(self, conn: C_contra, collection_id: int, doc_id: str) -> Row | None:
        """DOCUMENT_COLUMNS of a document."""
        ...

    def document_rows(
        self, conn: C_contra, collection_id: int, limit: int, after: str
    ) -> list[Row]:
        """DOCUMENT_COLUMNS of the first `limit` documents with an id above `after`, by id."""
        ...

    def chunk_ids(self, conn: C_contra, doc_row: int) -> list[int]:
        """A document's chunk ids by ordinal."""
        ...

    def chunk_rows(self, conn: C_contra, chunk_ids: Sequence[int]) -> list[Row]:
        """CHUNK_COLUMNS of those chunks, in any order."""
        ...

    def file_rows(
        self, conn: C_contra, collection_id: int, bounds: tuple[str, str, str]
    ) -> list[Row]:
        """(doc_id, source, content_hash) by source, of documents whose source is bounds[0] or
        lies in [bounds[1], bounds[2]) (`plans.source_range`)."""
        ...

    def export_rows(self, conn: C_contra, collection_id: int, limit: int, after: str) -> list[Row]:
        """EXPORT_COLUMNS of the first `limit` documents with an id above `after`, by id."""
        ...

    def spans_and_vectors(self, conn: C_contra, doc_row: int) -> tuple[list[Row], np.ndarray]:
        """SPAN_COLUMNS of a document's chunks by ordinal, and their float32 vectors."""
        ...


class WatchSQL(Protocol[C_contra]):
    """Watched folders: WATCH_COLUMNS rows."""

    def upsert_watch(self, conn: C_contra, collection: str, root: str, options: str) -> Row: ...

    def watch_rows(self, conn: C_contra) -> list[Row]: ...

    def delete_watch(self, conn: C_contra, watch_id: int) -> Row | None: ...


class JobSQL(Protocol[C_contra]):
    """Jobs (JOB_COLUMNS rows) and their items."""

    def insert_job(
        self,
        conn: C_contra,
        job_id: str,
        collection: str,
        kind: str,
        total: int,
        params: str,
        items: Sequence[tuple[str, str]],
    ) -> None:
        """A queued job and its items (doc_id, payload JSON), seq 0, 1, ..."""
        ...

    def job_row(self, conn: C_contra, job_id: str, *, lock: bool = False) -> Row | None: ...

    def job_rows(self, conn: C_contra, limit: int, state: str | None) -> list[Row]:
        """Most recent first, only those in `state` unless it is None."""
        ...

    def claim_job(
        self,
        conn: C_contra,
        owner: str,
        lease_seconds: float,
        skip: Sequence[str],
        only: str | None,
    ) -> Row | None:
        """Take the oldest unfinished job nobody live holds (or `owner` already does), not in
        `skip`, `only` that one if given; the job as claimed."""
        ...

    def renew_job(self, conn: C_contra, job_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend `owner`'s hold on its running job; False when it is not its own."""
        ...

    def release_jobs(self, conn: C_contra, owner: str, only: str | None) -> None:
        """`owner`'s running jobs (`only` that one, if given) queued again, held by nobody."""
        ...

    def pending_items(self, conn: C_contra, job_id: str, limit: int, after: int) -> list[Row]:
        """(seq, doc_id, payload) of pending items with seq > `after`, by seq."""
        ...

    def mark_items(self, conn: C_contra, job_id: str, seqs: Sequence[int], state: str) -> list[int]:
        """Mark those items that are still pending done / failed, dropping their payloads;
        the seqs marked now."""
        ...

    def advance_job(
        self, conn: C_contra, job_id: str, done: int, failed: int, lease_seconds: float
    ) -> None:
        """Add to a job's counters and renew its owner's hold."""
        ...

    def set_errors(self, conn: C_contra, job_id: str, errors: str) -> None: ...

    def close_job(self, conn: C_contra, job_id: str, state: str) -> None:
        """A job done or failed, held by nobody."""
        ...

    def requeue_failed(self, conn: C_contra, job_id: str, errors: str) -> None:
        """A failed job queued again with `errors`, held by nobody."""
        ...


class ReindexSQL(Protocol[C_contra]):
    """New vectors staged per reindex job, then swapped in."""

    def chunks_to_reindex(
        self, conn: C_contra, collection_id: int, job_id: str, limit: int, after: int
    ) -> list[Row]:
        """(chunk id, text) of chunks with id > `after` and no vector staged for the job."""
        ...

    def stage_vectors(
        self, conn: C_contra, job_id: str, chunk_ids: Sequence[int], vectors: np.ndarray
    ) -> None: ...

    def has_unstaged(self, conn: C_contra, collection_id: int, job_id: str) -> bool:
        """Whether a chunk of the collection still lacks a staged vector."""
        ...

    def swap_vectors(
        self,
        conn: C_contra,
        collection: Collection,
        job_id: str,
        target: ReindexTarget,
        settings: str,
    ) -> None:
        """The staged vectors in place of the collection's, the collection bound to `target`
        with `settings`, its epoch and generation moved on."""
        ...


class CacheSQL(Protocol[C_contra]):
    """The embedding cache: (fingerprint, text hash) -> float32 bytes, `used` a time."""

    def cache_lookup(
        self, conn: C_contra, fingerprint: str, hashes: Sequence[bytes]
    ) -> dict[bytes, bytes]: ...

    def cache_put(
        self, conn: C_contra, fingerprint: str, rows: dict[bytes, bytes], used: float
    ) -> None: ...

    def cache_size(self, conn: C_contra) -> int: ...

    def drop_oldest_cache(self, conn: C_contra, n: int) -> None: ...


class MaintenanceSQL(Protocol[C_contra]):
    """What `compact` does inside its transaction (then the engine reclaims the space)."""

    def store_bytes(self, conn: C_contra) -> int:
        """The store's size on disk."""
        ...

    def drop_tombstones(self, conn: C_contra) -> int:
        """Forget deleted chunk ids kept for in-memory indexes (SQLite); how many."""
        ...

    def bump_epochs(self, conn: C_contra) -> None:
        """Move every collection's epoch on: in-memory indexes reload."""
        ...

    def drop_old_jobs(self, conn: C_contra, keep: int) -> int:
        """Finished jobs but the `keep` most recent, and finished jobs' done or failed items
        (a failed job's pending items stay: a retry resumes with them); how many jobs."""
        ...

    def optimize(self, conn: C_contra) -> None:
        """Merge the keyword index's segments, where the engine has any to merge."""
        ...


@dataclass(frozen=True)
class Statements(Generic[C]):
    """An engine's statements, one module per group."""

    catalog: CatalogSQL[C]
    watches: WatchSQL[C]
    jobs: JobSQL[C]
    reindex: ReindexSQL[C]
    cache: CacheSQL[C]
    maintenance: MaintenanceSQL[C]
