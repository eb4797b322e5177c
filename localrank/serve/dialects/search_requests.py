"""What the search API's routes take, declared once (the handlers in `search_api` receive
these, and the OpenAPI document shows them): collections, documents, folders, watches, jobs.
A search takes `SearchRequest` (collections/search.py), documents `DocumentIn`, folder options
`FolderOptions` and a collection's chunking `ChunkSettings`: the collections layer declares
what it validates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from localrank.collections import FolderOptions
from localrank.collections.documents import Documents
from localrank.collections.ingest import ChunkSettings
from localrank.declare import Choices, Doc, Pattern, Range, arg
from localrank.store.filters import INT64_MAX
from localrank.store.records import CollectionName

# An existing collection (404 otherwise); one a request creates is a CollectionName.
Name = Annotated[str, Doc("Collection name.")]
# An absolute path as the daemon's machine reads it (`~` is the daemon user's home).
AbsolutePath = Annotated[
    str,
    Doc("Absolute path of a folder (or one file) on the daemon's machine."),
    Pattern(
        r"^(?:/[\s\S]*|~(?:/[\s\S]*)?)$",
        message="path must be absolute ({value!r} is not): the daemon does not share your "
        "working directory",
    ),
]


@dataclass(frozen=True, kw_only=True)
class NewCollection:
    name: CollectionName
    settings: ChunkSettings | None = arg("How its documents are chunked.", default=None)


@dataclass(frozen=True, kw_only=True)
class CollectionPath:
    name: Name = arg(where="path")


@dataclass(frozen=True, kw_only=True)
class DocumentPath:
    name: Name = arg(where="path")
    doc_id: str = arg("The document's id.", where="path")


@dataclass(frozen=True, kw_only=True)
class NewDocuments:
    name: Name = arg(where="path")
    documents: Documents = arg(
        "{id, text, metadata?, source?} objects; an id given twice counts once, with its last "
        "document."
    )
    background: bool = arg(
        "Queue a background job and answer its job_id (202).", name="async", default=False
    )


@dataclass(frozen=True, kw_only=True)
class DocumentPage:
    name: Name = arg(where="path")
    limit: Annotated[int, Range(1, 1000)] = arg("Page size.", where="query", default=100)
    after: str | None = arg("The last id of the previous page.", where="query", default=None)
    source: str | None = arg(
        "Only the document read from this file (absolute).", where="query", default=None
    )


@dataclass(frozen=True, kw_only=True)
class Reindex:
    name: Name = arg(where="path")
    force: bool = arg("Re-embed even when the model did not change.", default=False)


@dataclass(frozen=True, kw_only=True)
class IndexFolder(FolderOptions):
    name: Name = arg(where="path")
    path: AbsolutePath
    prune: bool = arg("Remove documents whose file is gone.", default=False)
    watch: bool = arg("Also watch the folder.", default=False)


@dataclass(frozen=True, kw_only=True)
class NewWatch(FolderOptions):
    collection: CollectionName
    path: AbsolutePath


@dataclass(frozen=True, kw_only=True)
class WatchPath:
    watch_id: Annotated[int, Range(0, INT64_MAX)] = arg("The watch's id.", where="path")


@dataclass(frozen=True, kw_only=True)
class JobsQuery:
    state: Annotated[str, Choices(("queued", "running", "done", "failed"))] | None = arg(
        "Only jobs in this state.", where="query", default=None
    )
    limit: Annotated[int, Range(1, 1000)] = arg("How many.", where="query", default=50)


@dataclass(frozen=True, kw_only=True)
class JobPath:
    job_id: str = arg("The job's id.", where="path")
