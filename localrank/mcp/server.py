"""The MCP server: localrank's collections as tools for coding agents and editors.

A thin client of the running daemon over HTTP (`localrank.client`): every tool is one or two
daemon requests, so the model stays loaded once, in the daemon. Built on the official SDK's
`MCPServer` (the 2.x line: it serves 2026-07-28 clients and 2025-era ones that still open with
`initialize`, over stdio and Streamable HTTP alike). Tools: `search`, `get`, `get_many`,
`collections`, `status`, annotated read-only, idempotent and closed-world, each answering
`structuredContent` to its `outputSchema` (mcp/outputs.py); with `allow_index`, also
`index_folder` and `unwatch` (they make the daemon read folders of the user's choosing, so they
are off unless the user turns them on).

The server answers at once, also while the daemon is found, started or loading its model: a
tool call waits at most `ANSWER_WITHIN` seconds (mcp/daemon.py; agents give up sooner: Codex's
startup timeout is 10 s) and otherwise says the model is still loading, with its progress.

Errors the model can act on (a collection that does not exist, a bad filter, a line range
past the end) come back as tool errors carrying the daemon's own message (`ToolError`: the SDK
withholds the text of any other exception); arguments that do not fit a tool's schema are
refused by the SDK before the tool runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from localrank import __version__
from localrank.client import DaemonClient
from localrank.errors import InvalidInput, LocalrankError, NotFound
from localrank.mcp.daemon import DaemonAccess
from localrank.mcp.documents import (
    collection_names,
    cut_at_line,
    document_output,
    glob_matches,
    is_glob,
    line_range,
    listed,
)
from localrank.mcp.outputs import (
    Citation,
    CollectionsOutput,
    Document,
    ManyDocument,
    ManyOutput,
    Omitted,
    SearchHit,
    SearchOutput,
    StatusOutput,
)

F = TypeVar("F", bound=Callable[..., Any])
# get_many: how much text one answer carries at most (default, and the most one may ask for),
# and how many documents.
MANY_CHARS = 40_000
MAX_MANY_CHARS = 200_000
MAX_MANY_DOCUMENTS = 50

INSTRUCTIONS = """\
localrank searches the user's local collections (notes, documents, code repositories) with
hybrid keyword + semantic search, on this machine (nothing leaves it). Every tool only reads.
- `search` finds passages: each result has the text, a score and a citation (source file, line
  range, and page for PDFs). Prefer several focused queries to one long one; use mode="keyword"
  for exact names or identifiers, and `filter` (e.g. {"format": "code"}) to narrow.
- `get` reads one document, or the lines around a citation (line_start/line_end).
- `get_many` reads several documents in one call: ids, cited paths, or globs such as
  "**/docs/*.md", within max_chars (what does not fit is listed under `omitted`).
- `collections` lists what is indexed; `status` shows the model, running jobs and watched
  folders. If a tool says the model is still loading, wait a few seconds and call it again.
"""


def tool_errors(fn: F) -> F:
    """localrank's errors (the daemon's, or a tool's own) as tool errors with their message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LocalrankError as exc:
            raise ToolError(exc.message) from exc

    return wrapper  # type: ignore[return-value]


def _cited(citation: dict[str, Any]) -> Citation:
    """A search result's citation as the tools give it: the file (or document id) and lines."""
    return {
        "source": citation.get("source") or citation["document_id"],
        "line_start": citation["line_start"],
        "line_end": citation["line_end"],
        "page": citation.get("page"),
    }


def build_server(access: DaemonAccess, *, allow_index: bool = False) -> MCPServer:
    """The MCP server with localrank's tools (the indexing ones only with `allow_index`)."""
    server: MCPServer = MCPServer(
        "localrank",
        title="localrank: local search",
        version=__version__,
        instructions=INSTRUCTIONS,
    )
    # Reading only, the same answer for the same index, and nothing outside the user's machine.
    read_only = ToolAnnotations(
        read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )

    def names(requested: list[str] | None) -> list[str]:
        if requested:
            return requested
        model = access.client().health.get("fingerprint")  # the daemon's model when found
        everything = access.call(lambda c: c.collections())
        usable = [c["name"] for c in everything if model is None or c["fingerprint"] == model]
        if not usable:
            raise NotFound(
                "there are no collections to search yet: index a folder first "
                "(`localrank index PATH --collection NAME`)"
            )
        return usable

    @server.tool(title="Search local collections", annotations=read_only)
    @tool_errors
    def search(
        query: Annotated[str, Field(min_length=1, description="What to look for, in words.")],
        collections: Annotated[
            list[str] | None,
            Field(description="Collections to search (default: every collection)."),
        ] = None,
        top_k: Annotated[int, Field(ge=1, le=100, description="How many results.")] = 10,
        mode: Annotated[
            Literal["hybrid", "vector", "keyword"],
            Field(description="hybrid (keyword + semantic, reranked), vector or keyword."),
        ] = "hybrid",
        rerank: Annotated[
            bool | None, Field(description="Rerank candidates (default: on for hybrid).")
        ] = None,
        filter: Annotated[
            dict[str, Any] | None,
            Field(
                description='Metadata filter: {"key": value} or {"key": [v1, v2]}, keys ANDed. '
                'Files carry "path" (relative to the indexed folder), "root" and "format" '
                "(markdown, text, code, pdf, html)."
            ),
        ] = None,
    ) -> SearchOutput:
        """Search the user's local collections (notes, documents, code). Each result has the
        passage text, a relevance score and a citation: the source file, the line range and,
        for PDFs, the page; `also_in` cites where else the same passage appears. Read more
        around a result with `get`, several with `get_many`."""
        merged: list[SearchHit] = []
        searched = names(collections)
        for name in searched:
            body: dict[str, Any] = {"collection": name, "query": query, "top_k": top_k}
            body["mode"] = mode
            if rerank is not None:
                body["rerank"] = rerank
            if filter is not None:
                body["filter"] = filter
            out = access.call(lambda c, b=body: c.search(b))  # type: ignore[misc]
            for r in out["results"]:
                c = r["citation"]
                merged.append(
                    {
                        "collection": name,
                        "document_id": r["document_id"],
                        "text": r["text"],
                        "score": r["score"],
                        "citation": _cited(c),
                        # The same text elsewhere (near-duplicates collapsed into this result).
                        "also_in": [_cited(d) for d in r.get("also_in", [])],
                    }
                )
        merged.sort(key=lambda r: -r["score"])
        return {"query": query, "collections": searched, "results": merged[:top_k]}

    def find(document: str, collection: str | None) -> tuple[str, dict[str, Any]]:
        """(collection, document with text) for an id or a cited file path; NotFound."""
        tried = [collection] if collection else access.call(collection_names)
        path = Path(document).expanduser()
        for name in tried:
            try:
                return name, access.call(lambda c, n=name: c.document(n, document))  # type: ignore[misc]
            except NotFound:
                if not path.is_absolute():
                    continue
            try:
                return name, access.call(
                    lambda c, n=name: c.document_from(n, path.as_posix())  # type: ignore[misc]
                )
            except NotFound:
                continue
        where = f"collection {collection!r}" if collection else "any collection"
        raise NotFound(f"no document {document!r} in {where}")

    @server.tool(title="Read a document", annotations=read_only)
    @tool_errors
    def get(
        document: Annotated[
            str,
            Field(
                min_length=1,
                description="A document id, or a file path as a search result's citation "
                "source gives it.",
            ),
        ],
        collection: Annotated[
            str | None, Field(description="The collection (default: look in every one).")
        ] = None,
        line_start: Annotated[
            int | None, Field(ge=1, description="First line to return (1-based).")
        ] = None,
        line_end: Annotated[
            int | None, Field(ge=1, description="Last line to return (inclusive).")
        ] = None,
    ) -> Document:
        """Read a document (or the lines line_start..line_end of it) from a collection: the
        text a search result cites, with what surrounds it."""
        name, doc = find(document, collection)
        text, first, last, total = line_range(doc["text"], line_start, line_end)
        return document_output(name, doc, text, first, last, total)

    @server.tool(title="Read several documents", annotations=read_only)
    @tool_errors
    def get_many(
        documents: Annotated[
            list[str],
            Field(
                min_length=1,
                max_length=MAX_MANY_DOCUMENTS,
                description="Document ids, file paths as citations give them, or glob patterns "
                "over those paths (* also crosses folders; a relative pattern such as "
                "'docs/*.md' matches the path inside the indexed folder).",
            ),
        ],
        collection: Annotated[
            str | None, Field(description="The collection (default: look in every one).")
        ] = None,
        max_chars: Annotated[
            int,
            Field(
                ge=1000,
                le=MAX_MANY_CHARS,
                description=f"Most characters of text in the answer (default {MANY_CHARS}).",
            ),
        ] = MANY_CHARS,
    ) -> ManyOutput:
        """Read several whole documents in one call (the sources several search results cite,
        or every file a glob matches), in the order asked, up to max_chars of text in all: the
        document that crosses the limit is cut at a line (truncated: true) and the ones after
        it are listed under `omitted`, to ask for next."""
        # (collection, id) -> the document; one a glob listed has no "text" until it is read.
        found: dict[tuple[str, str], dict[str, Any]] = {}
        not_found: list[str] = []
        for item in documents:
            if is_glob(item):
                hits = [(n, d) for n, d in listed(access, collection) if glob_matches(item, d)]
                if not hits:
                    not_found.append(item)
                for name, listed_doc in sorted(hits, key=lambda h: h[1].get("source") or ""):
                    found.setdefault((name, listed_doc["id"]), listed_doc)
                continue
            try:
                name, doc = find(item, collection)
            except NotFound:
                not_found.append(item)
                continue
            found.setdefault((name, doc["id"]), doc)
        out: list[ManyDocument] = []
        omitted: list[Omitted] = []
        used = 0
        full = False  # once a document is left out, so are the ones after it (order is kept)
        for (name, doc_id), known in found.items():
            if full or used >= max_chars or len(out) == MAX_MANY_DOCUMENTS:
                source = known.get("source")
                omitted.append({"collection": name, "document_id": doc_id, "source": source})
                continue
            doc = known
            if "text" not in doc:
                doc = access.call(lambda c, n=name, i=doc_id: c.document(n, i))  # type: ignore[misc]
            text = doc["text"]
            total = len(text.splitlines())
            cut = cut_at_line(text, max_chars - used)
            if text and not cut:  # not one whole line fits
                if out:  # ask for it next
                    omitted.append(
                        {"collection": name, "document_id": doc_id, "source": doc.get("source")}
                    )
                    full = True
                    continue
                cut = text[:max_chars]  # a first document of one long line: its beginning
            shown = max(1, len(cut.splitlines())) if cut else 0
            out.append(
                {
                    **document_output(name, doc, cut, 1, shown, total),
                    "truncated": len(cut) < len(text),
                }
            )
            used += len(cut)
            full = len(cut) < len(text)
        return {"documents": out, "chars": used, "omitted": omitted, "not_found": not_found}

    @server.tool(title="List collections", annotations=read_only)
    @tool_errors
    def collections() -> CollectionsOutput:
        """The user's collections: name, model, how many documents and chunks each holds."""
        rows = access.call(lambda c: c.collections())
        keep = ("name", "model", "dim", "documents", "chunks", "created")
        return {"collections": [{k: c.get(k) for k in keep} for c in rows]}  # type: ignore[misc]

    @server.tool(title="Daemon status", annotations=read_only)
    @tool_errors
    def status() -> StatusOutput:
        """The daemon's state: the model it serves, ingestion jobs in progress, and the folders
        it keeps indexed (with what each is doing)."""

        def read(c: DaemonClient) -> StatusOutput:
            health = c.read_health()
            jobs = [*c.jobs(state="running"), *c.jobs(state="queued")]
            keep = ("model", "model_id", "backend", "device", "dtype", "dim", "fallback_reason")
            return {
                "daemon": c.endpoint.url,
                "status": health.get("status"),
                "model": {k: health.get(k) for k in keep},
                "jobs_in_progress": jobs,
                "watched_folders": c.watches(),
            }

        return access.call(read)

    if allow_index:
        write = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

        @server.tool(annotations=write)
        @tool_errors
        def index_folder(
            path: Annotated[
                str, Field(min_length=1, description="Absolute path of a folder (or a file).")
            ],
            collection: Annotated[
                str, Field(min_length=1, description="Collection to index into (created).")
            ],
            watch: Annotated[
                bool, Field(description="Keep the folder indexed as its files change.")
            ] = False,
            prune: Annotated[
                bool, Field(description="Remove documents whose files are gone.")
            ] = False,
            include: Annotated[
                list[str] | None, Field(description="Globs to read (default: notes and code).")
            ] = None,
            exclude: Annotated[list[str] | None, Field(description="Globs to skip.")] = None,
        ) -> dict[str, Any]:
            """Index a folder into a collection (.gitignore honoured; Markdown, text, code,
            PDF and HTML). Embedding runs in the background: the answer carries a job_id,
            followed with `status`. watch=true keeps the folder indexed from now on."""
            target = Path(path).expanduser()
            if not target.is_absolute():
                raise InvalidInput(f"path must be absolute, not {path!r}")
            body: dict[str, Any] = {"path": target.as_posix(), "watch": watch, "prune": prune}
            if include:
                body["include"] = include
            if exclude:
                body["exclude"] = exclude
            return access.call(lambda c: c.index(collection, body))

        @server.tool(annotations=write)
        @tool_errors
        def unwatch(
            folder: Annotated[
                str, Field(min_length=1, description="The watched folder's path, or its id.")
            ],
        ) -> dict[str, Any]:
            """Stop keeping a folder indexed (its documents stay searchable)."""

            def remove(c: DaemonClient) -> dict[str, Any]:
                target = Path(folder).expanduser()
                ids = [
                    w["id"]
                    for w in c.watches()
                    if str(w["id"]) == folder
                    or w["path"] in (target.as_posix(), target.resolve().as_posix())
                ]
                if not ids:
                    raise NotFound(f"no watched folder matches {folder!r}")
                return {"removed": [r for i in ids for r in c.remove_watch(i)["removed"]]}

            return access.call(remove)

    return server
