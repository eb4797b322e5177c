"""Plain values a store takes and returns. No SQL, no numpy beyond the vectors.

Every implementation of the store protocol (`localrank.store.protocol.Store`) speaks these, so
the application layer (`localrank.collections`) never sees a row or a connection.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from localrank.declare import Doc, Pattern, kind_of, problem
from localrank.errors import InvalidInput, ModelMismatch

# Names are path- and URL-safe: letters, digits, '.', '_', '-', 1..128 characters.
CollectionName = Annotated[
    str,
    Doc("Collection name: 1-128 letters, digits, '.', '_' or '-', from a letter or digit."),
    Pattern(
        r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        message="collection name must be 1-128 characters of letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
    ),
]


def check_collection_name(name: str) -> str:
    """A valid collection name, or InvalidInput."""
    message = problem(kind_of(CollectionName), "name", name) if isinstance(name, str) else ""
    if message is not None:
        raise InvalidInput(message or "collection name must be a string", param="name")
    return name


@dataclass(frozen=True)
class Chunk:
    """A piece of a document and where it came from (lines are 1-based, inclusive)."""

    ordinal: int
    text: str
    char_start: int
    char_end: int
    line_start: int
    line_end: int
    page: int | None = None


@dataclass(frozen=True)
class Collection:
    """A named set of documents bound to one embedding fingerprint.

    `generation` changes with every write that adds or removes chunks and `epoch` when vectors
    change in place (reindex, compact): in-memory indexes use them to catch up.
    """

    id: int
    name: str
    fingerprint: str
    model_id: str
    dim: int
    created: str
    settings: dict[str, Any]
    generation: int = 0
    epoch: int = 0

    def to_api(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_id,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "created": self.created,
            "settings": self.settings,
            **extra,
        }


def check_fingerprint(collection: Collection, fingerprint: str, model_id: str) -> None:
    """ModelMismatch (409) unless `collection` is bound to the model with `fingerprint`."""
    if collection.fingerprint == fingerprint:
        return
    raise ModelMismatch(
        f"collection {collection.name!r} was embedded with {collection.model_id} "
        f"(fingerprint {collection.fingerprint}), but the server runs {model_id} "
        f"(fingerprint {fingerprint}). Re-embed it with the current model: "
        f"`localrank reindex {collection.name}` or POST /v1/collections/{collection.name}"
        "/reindex",
        collection_model=collection.model_id,
        server_model=model_id,
    )


@dataclass(frozen=True)
class PreparedDocument:
    """A validated document ready to write. `chunks`/`vectors` are None when its text is
    unchanged (content hash match): then only metadata and source are updated."""

    doc_id: str
    text: str
    metadata: dict[str, Any]
    source: str | None
    content_hash: str
    chunks: list[Chunk] | None = None
    vectors: np.ndarray | None = None

    def content_for(self, collection: Collection) -> tuple[list[Chunk], np.ndarray]:
        """The chunks and vectors a new or changed document must bring, checked against the
        collection it is written to (one vector per chunk, the collection's dimension)."""
        if self.chunks is None or self.vectors is None:
            raise ValueError(f"document {self.doc_id!r} is new or changed but has no chunks")
        if len(self.chunks) != len(self.vectors):
            raise ValueError("one vector per chunk is required")
        if len(self.vectors) and self.vectors.shape[1] != collection.dim:
            raise InvalidInput(
                f"vectors have {self.vectors.shape[1]} dimensions, collection "
                f"{collection.name!r} has {collection.dim}"
            )
        return self.chunks, self.vectors


@dataclass(frozen=True)
class WriteResult:
    """What happened to one document: created, updated, metadata (only) or unchanged."""

    doc_id: str
    status: str
    chunks: int


@dataclass(frozen=True)
class StoredDocument:
    """A document as read back (without its chunks)."""

    row_id: int
    doc_id: str
    text: str
    metadata: dict[str, Any]
    source: str | None
    content_hash: str
    updated: str
    chunk_count: int = 0

    def to_api(self, *, include_text: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.doc_id,
            "metadata": self.metadata,
            "source": self.source,
            "content_hash": self.content_hash,
            "updated": self.updated,
            "chunks": self.chunk_count,
        }
        if include_text:
            out["text"] = self.text
        return out


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as read back: its span, and the document facts a citation needs."""

    id: int
    doc_row: int
    document_id: str
    source: str | None
    span: Chunk
    metadata: dict[str, Any]

    @property
    def text(self) -> str:
        return self.span.text

    def citation(self) -> dict[str, Any]:
        s = self.span
        return {
            "document_id": self.document_id,
            "source": self.source,
            "char_start": s.char_start,
            "char_end": s.char_end,
            "line_start": s.line_start,
            "line_end": s.line_end,
            "page": s.page,
        }


@dataclass(frozen=True)
class DocumentFile:
    """A stored document that came from a file: its id, where it was read from, its hash."""

    doc_id: str
    source: str
    content_hash: str


@dataclass(frozen=True)
class Watch:
    """A folder kept indexed into a collection, as registered (the daemon watches it).

    `options` are the folder-reading options (include / exclude globs, ignore files) as the
    application layer wrote them; the store keeps them as given.
    """

    id: int
    collection: str
    root: str
    options: dict[str, Any]
    created: str

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "collection": self.collection,
            "path": self.root,
            "options": self.options,
            "created": self.created,
        }


JOB_STATES = ("queued", "running", "done", "failed")


def new_job_owner() -> str:
    """An owner id for one process's job runner: `host:pid:nonce`, so a store on this host can
    tell whether the owner of a running job is still alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Job:
    """An ingestion or reindex job, as stored."""

    id: str
    collection: str
    kind: str  # "ingest" | "reindex"
    state: str  # one of JOB_STATES
    total: int
    done: int
    failed: int
    errors: list[dict[str, Any]]
    params: dict[str, Any]
    owner: str | None
    created: str
    updated: str

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def to_api(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "collection": self.collection,
            "kind": self.kind,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "errors": self.errors,
            "created": self.created,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class JobItem:
    """One pending document of an ingest job: its place in the job and its payload (JSON)."""

    seq: int
    doc_id: str
    payload: str


@dataclass(frozen=True)
class ItemFailure:
    """A job item that could not be stored, and why."""

    seq: int
    doc_id: str
    message: str


@dataclass(frozen=True)
class JobProgress:
    """What one write did for a job: items stored (`done` seqs) and items that failed."""

    job_id: str
    done: tuple[int, ...] = ()
    failed: tuple[ItemFailure, ...] = ()


@dataclass(frozen=True)
class CompactReport:
    """Sizes before and after a compaction, and what was dropped."""

    bytes_before: int
    bytes_after: int
    tombstones: int
    cache_rows_trimmed: int
    jobs_removed: int

    def to_api(self) -> dict[str, Any]:
        return {
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "reclaimed": max(0, self.bytes_before - self.bytes_after),
            "tombstones": self.tombstones,
            "cache_rows_trimmed": self.cache_rows_trimmed,
            "jobs_removed": self.jobs_removed,
        }


@dataclass(frozen=True)
class SearchReadiness:
    """How far a store got preparing its collections for search (`Store.prepare_search`):
    `ready` once every collection that existed when it started can be searched at full speed.
    Searches are answered before that too, only the first ones may wait for a load."""

    ready: bool
    loaded: int
    total: int
    error: str | None = None

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ready": self.ready, "loaded": self.loaded, "total": self.total}
        if self.error is not None:
            body["error"] = self.error
        return body
