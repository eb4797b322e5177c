"""What each MCP tool answers, as types: the SDK publishes them as the tool's `outputSchema`
and sends each answer as `structuredContent` (with the same JSON as text, for clients that read
only text)."""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict


class Citation(TypedDict):
    source: str  # the file (absolute path), or the document id when it has no file
    line_start: int
    line_end: int
    page: int | None  # PDFs only


class SearchHit(TypedDict):
    collection: str
    document_id: str
    text: str
    score: float
    citation: Citation
    also_in: list[Citation]  # the same passage elsewhere (near-duplicates collapsed into this one)


class SearchOutput(TypedDict):
    query: str
    collections: list[str]
    results: list[SearchHit]


class Document(TypedDict):
    collection: str
    document_id: str
    source: str | None
    metadata: dict[str, Any]
    line_start: int
    line_end: int
    total_lines: int
    text: str


class ManyDocument(Document):
    truncated: bool  # cut at a line to keep the answer under max_chars


class Omitted(TypedDict):
    collection: str
    document_id: str
    source: str | None


class ManyOutput(TypedDict):
    documents: list[ManyDocument]
    chars: int  # characters of text returned, at most max_chars
    omitted: list[Omitted]  # matched, but past max_chars (or max documents): ask for them next
    not_found: list[str]  # requested ids, paths or patterns that matched nothing


class CollectionRow(TypedDict):
    name: str
    model: str
    dim: int
    documents: int
    chunks: int
    created: str


class CollectionsOutput(TypedDict):
    collections: list[CollectionRow]


class StatusOutput(TypedDict):
    daemon: str
    status: str | None
    model: dict[str, Any]
    jobs_in_progress: list[dict[str, Any]]
    watched_folders: list[dict[str, Any]]
