"""The rows both engines' tables hold, and the records they become.

The SQLite and PostgreSQL schemas share their tables' names and columns (they differ in how
vectors, keyword search and filter values are kept): each engine selects the column lists below,
in this order, and hands the rows here. A row is whatever the driver returns (a tuple).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from localrank.store.plans import StoredState
from localrank.store.records import (
    Chunk,
    Collection,
    DocumentFile,
    Job,
    JobItem,
    PreparedDocument,
    StoredChunk,
    StoredDocument,
    Watch,
)

Row = tuple[Any, ...]

COLLECTION_COLUMNS = "id, name, fingerprint, model_id, dim, created, settings, generation, epoch"
# A document with its chunk count (`d` is `documents`).
DOCUMENT_COLUMNS = (
    "d.id, d.doc_id, d.text, d.metadata, d.source, d.content_hash, d.updated, "
    "(SELECT count(*) FROM chunks c WHERE c.doc = d.id)"
)
# What an upsert compares a document against (`d` is `documents`).
STORED_STATE_COLUMNS = (
    "d.id, d.content_hash, d.metadata, d.source, (SELECT count(*) FROM chunks c WHERE c.doc = d.id)"
)
# A chunk with what its citation needs of its document (`c` is `chunks`, `d` `documents`).
CHUNK_COLUMNS = (
    "c.id, c.doc, d.doc_id, d.source, c.ordinal, c.text, c.char_start, c.char_end, "
    "c.line_start, c.line_end, c.page, d.metadata"
)
# A chunk's span as `write_documents` takes it (`c` is `chunks`).
SPAN_COLUMNS = "c.ordinal, c.text, c.char_start, c.char_end, c.line_start, c.line_end, c.page"
EXPORT_COLUMNS = "id, doc_id, text, metadata, source, content_hash"
JOB_COLUMNS = (
    "id, collection, kind, state, total, done, failed, errors, params, owner, created, updated"
)
WATCH_COLUMNS = "id, collection, root, options, created"


def now_iso() -> str:
    """UTC timestamp, second precision, the one format stored in every table."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_json(value: Any) -> str:
    """A JSON column's text (metadata keeps non-ASCII as it is; keys sorted, so equal values
    are equal texts)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def prefixed(columns: str, alias: str) -> str:
    """`a, b` as `alias.a, alias.b`."""
    return ", ".join(f"{alias}.{c}" for c in columns.split(", "))


def collection(row: Row) -> Collection:
    return Collection(
        id=int(row[0]),
        name=row[1],
        fingerprint=row[2],
        model_id=row[3],
        dim=int(row[4]),
        created=row[5],
        settings=json.loads(row[6]),
        generation=int(row[7]),
        epoch=int(row[8]),
    )


def listed_collection(row: Row) -> tuple[Collection, int, int]:
    """COLLECTION_COLUMNS followed by the document and chunk counts."""
    return collection(row), int(row[-2]), int(row[-1])


def document(row: Row) -> StoredDocument:
    return StoredDocument(
        int(row[0]), row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], int(row[7])
    )


def stored_state(row: Row) -> StoredState:
    """STORED_STATE_COLUMNS."""
    return StoredState(int(row[0]), row[1], json.loads(row[2]), row[3], int(row[4]))


def stored_chunk(row: Row) -> StoredChunk:
    span = Chunk(int(row[4]), row[5], row[6], row[7], row[8], row[9], row[10])
    return StoredChunk(int(row[0]), int(row[1]), row[2], row[3], span, json.loads(row[11]))


def in_order(chunks: list[StoredChunk], chunk_ids: Sequence[int]) -> list[StoredChunk]:
    """`chunks` in the order of `chunk_ids` (those that exist)."""
    by_id = {c.id: c for c in chunks}
    return [by_id[int(i)] for i in chunk_ids if int(i) in by_id]


def document_file(row: Row) -> DocumentFile:
    return DocumentFile(row[0], row[1], row[2])


def exported(row: Row, spans: list[Row], vectors: np.ndarray, dim: int) -> PreparedDocument:
    """EXPORT_COLUMNS, its chunks' SPAN_COLUMNS and their float32 vectors, as `write_documents`
    takes them."""
    if not spans:
        vectors = np.empty((0, dim), dtype=np.float32)
    chunks = [Chunk(*s[:7]) for s in spans]
    return PreparedDocument(row[1], row[2], json.loads(row[3]), row[4], row[5], chunks, vectors)


def job(row: Row) -> Job:
    return Job(
        row[0],
        row[1],
        row[2],
        row[3],
        int(row[4]),
        int(row[5]),
        int(row[6]),
        json.loads(row[7]),
        json.loads(row[8]),
        row[9],
        row[10],
        row[11],
    )


def job_item(row: Row) -> JobItem:
    return JobItem(int(row[0]), row[1], row[2])


def watch(row: Row) -> Watch:
    return Watch(int(row[0]), row[1], row[2], json.loads(row[3]), row[4])
