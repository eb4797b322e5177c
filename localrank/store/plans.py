"""The store's decisions, as pure functions of what is stored and what is asked: what an upsert
does to a document, how a job's state and errors move, what a reindex rebinds a collection to,
which cached vectors fit. No engine, no I/O: `sql_store` carries them out with an engine's
statements, and tests/test_store_plans.py holds them without a database.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from localrank.errors import Conflict
from localrank.store.records import Chunk, Collection, ItemFailure, Job, PreparedDocument

# --- documents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredState:
    """What an upsert compares a document against: its stored row."""

    row_id: int
    content_hash: str
    metadata: dict[str, Any]
    source: str | None
    chunk_count: int


@dataclass(frozen=True)
class Upsert:
    """What writing one document does, and what it reports (`status`, `chunk_count`).

    - unchanged: nothing;
    - metadata: the row's metadata and source, and its filter values;
    - created: a new row, its filter values, its chunks and vectors;
    - updated: the old chunks go, then as created, on the same row.
    """

    status: str
    chunk_count: int
    chunks: list[Chunk] | None = None
    vectors: np.ndarray | None = None

    @property
    def writes(self) -> bool:
        return self.status != "unchanged"


def plan_upsert(
    stored: StoredState | None, doc: PreparedDocument, collection: Collection
) -> Upsert:
    """The upsert of `doc` over what is stored. Unchanged text (same content hash) keeps its
    chunks; so does a document prepared without chunks (its text was unchanged when it was
    prepared). New or changed text must bring its chunks and vectors (`content_for`)."""
    if stored is not None and (doc.chunks is None or stored.content_hash == doc.content_hash):
        same = (
            stored.content_hash == doc.content_hash
            and stored.metadata == doc.metadata
            and stored.source == doc.source
        )
        return Upsert("unchanged" if same else "metadata", stored.chunk_count)
    chunks, vectors = doc.content_for(collection)
    return Upsert("created" if stored is None else "updated", len(chunks), chunks, vectors)


def source_range(root: str) -> tuple[str, str, str]:
    """(root, low, high): a source is the file `root` or lies under it when it equals root or
    low <= source < high, in byte order. Under `base/` is every string from "base/" up to (not
    including) "base0" ('0' follows '/'), so `/notes0/x` and `/notes-old/x` are not under
    `/notes`."""
    base = root.rstrip("/")
    return base, base + "/", base + "0"


# --- jobs ------------------------------------------------------------------------------------

JOB_KINDS = ("ingest", "reindex")
# A job keeps at most this many errors (its documents' failures, then its own).
MAX_ERRORS_KEPT = 1000
# Finished jobs beyond the most recent this many are deleted by compact.
KEEP_FINISHED_JOBS = 200


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


def check_job_kind(kind: str) -> str:
    if kind not in JOB_KINDS:
        raise ValueError(f"a job is one of {', '.join(JOB_KINDS)}, not {kind!r}")
    return kind


def finished_state(job: Job, error: str | None) -> str:
    """How a job ends: failed when it ends with an error or when every item it ran failed."""
    if error is not None or (job.failed > 0 and job.done == 0):
        return "failed"
    return "done"


def newly_failed(failed: Iterable[ItemFailure], marked: Iterable[int]) -> list[ItemFailure]:
    """The failures whose items were still pending (`marked`: the seqs just marked failed),
    each item once: a runner that lost its job and reports again counts nothing twice."""
    pending = set(marked)
    out: list[ItemFailure] = []
    for f in failed:
        if f.seq in pending:
            pending.discard(f.seq)
            out.append(f)
    return out


def with_item_failures(
    errors: list[dict[str, Any]], failures: Sequence[ItemFailure]
) -> list[dict[str, Any]]:
    """A job's errors after its documents' `failures`, capped at MAX_ERRORS_KEPT."""
    more = [{"id": f.doc_id, "message": f.message} for f in failures]
    return [*errors, *more][:MAX_ERRORS_KEPT]


def with_job_error(errors: list[dict[str, Any]], message: str | None) -> list[dict[str, Any]]:
    """A job's errors after it ended with `message` (its own error: no document id)."""
    return [*errors, {"id": None, "message": message}] if message else errors


def retry_errors(job: Job) -> list[dict[str, Any]]:
    """The errors a failed job keeps when it is queued again: its documents' failures (its own
    errors said why it stopped). Conflict unless it failed."""
    if job.state != "failed":
        raise Conflict(f"job {job.id} is {job.state}: only a failed job can be retried")
    return [e for e in job.errors if e.get("id") is not None]


# --- reindex ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReindexTarget:
    """The model a reindex job rebinds its collection to (the job's params)."""

    fingerprint: str
    model_id: str
    dim: int

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ReindexTarget:
        return cls(params["fingerprint"], params["model_id"], int(params["dim"]))


def reindexed_settings(collection: Collection) -> dict[str, Any]:
    """A collection's settings once it is reindexed: they remember the model it had."""
    return {**collection.settings, "reindexed_from": collection.model_id}


# --- keyword search --------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_TERMS = 64


def query_words(text: str) -> list[str]:
    """The words a keyword search looks for: the first MAX_QUERY_TERMS `\\w+` runs of the
    text, lowercased, each once, in order. Each engine quotes them into its own query syntax
    (runs of word characters hold no quote or operator) and ORs them: natural-language queries
    would lose every passage missing a single word under AND."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(text)[:MAX_QUERY_TERMS]:
        seen.setdefault(w.lower(), None)
    return list(seen)


# --- the embedding cache ---------------------------------------------------------------------


def text_hash(text: str) -> bytes:
    """The cache key's text part."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def cache_rows(entries: Sequence[tuple[str, np.ndarray]]) -> dict[bytes, bytes]:
    """(text, vector) entries as cache rows: text hash -> float32 bytes, one row per text."""
    return {text_hash(t): np.asarray(v, dtype=np.float32).tobytes() for t, v in entries}


def cached_vectors(
    hashes: Sequence[bytes], found: dict[bytes, bytes], dim: int
) -> dict[int, np.ndarray]:
    """Positions in `hashes` with a cached vector of `dim` dimensions, and those vectors
    (`found`: the cache rows read for them)."""
    out: dict[int, np.ndarray] = {}
    for i, h in enumerate(hashes):
        blob = found.get(h)
        if blob is not None and len(blob) == dim * 4:
            out[i] = np.frombuffer(blob, dtype=np.float32)
    return out


def cache_excess(rows: int, max_rows: int) -> int:
    """How many of the oldest cache rows a trim to `max_rows` drops."""
    return max(0, rows - int(max_rows))
