"""Plain values the store returns and accepts. No SQL, no numpy beyond the vectors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from localrank.chunking import Chunk


@dataclass(frozen=True)
class Collection:
    """A named set of documents bound to one embedding fingerprint."""

    id: int
    name: str
    fingerprint: str
    model_id: str
    dim: int
    created: str
    settings: dict[str, Any]
    generation: int = 0
    epoch: int = 0

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Collection:
        return cls(
            id=row[0],
            name=row[1],
            fingerprint=row[2],
            model_id=row[3],
            dim=row[4],
            created=row[5],
            settings=json.loads(row[6]),
            generation=row[7],
            epoch=row[8],
        )

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


COLLECTION_COLUMNS = "id, name, fingerprint, model_id, dim, created, settings, generation, epoch"


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


@dataclass(frozen=True)
class WriteResult:
    """What happened to one document: created, updated, metadata (only) or unchanged."""

    doc_id: str
    status: str
    chunks: int


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as read back, with what a citation needs."""

    id: int
    doc_row: int
    document_id: str
    source: str | None
    ordinal: int
    text: str
    char_start: int
    char_end: int
    line_start: int
    line_end: int
    page: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def citation(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "source": self.source,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "line_start": self.line_start,
            "line_end": self.line_end,
            "page": self.page,
        }


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
