"""The MCP server: localrank's collections as tools for coding agents and editors.

A thin client of the running daemon over HTTP (`localrank.client`): every tool is one or two
daemon requests, so the model stays loaded once, in the daemon. Built on the official SDK's
`MCPServer` (the 2.x line: it serves 2026-07-28 clients and 2025-era ones that still open with
`initialize`, over stdio and Streamable HTTP alike). Tools: `search`, `get`, `collections`,
`status`; with `allow_index`, also `index_folder` and `unwatch` (they make the daemon read
folders of the user's choosing, so they are off unless the user turns them on).

Errors the model can act on (a collection that does not exist, a bad filter, a line range
past the end) come back as tool errors carrying the daemon's own message (`ToolError`: the SDK
withholds the text of any other exception); arguments that do not fit a tool's schema are
refused by the SDK before the tool runs.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from localrank import __version__
from localrank.client import DaemonClient, DaemonUnreachable
from localrank.errors import InvalidInput, LocalrankError, NotFound, NotReady

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
READY_WAIT_SECONDS = 180.0  # a tool call waits this long for a daemon that is loading its model

INSTRUCTIONS = """\
localrank searches the user's local collections (notes, documents, code repositories) with
hybrid keyword + semantic search. Use `search` to find passages (each result cites its source
file, line range and, for PDFs, page), then `get` to read the cited lines or a whole document.
`collections` lists what is indexed; `status` shows the model, running jobs and watched folders.
"""


class DaemonAccess:
    """The daemon the tools talk to. `connect` finds the running daemon (or starts one); when
    the daemon goes away mid-session, the next call connects again."""

    def __init__(
        self, connect: Callable[[], DaemonClient], *, ready_wait: float = READY_WAIT_SECONDS
    ) -> None:
        self._connect = connect
        self._client: DaemonClient | None = None
        self._lock = threading.Lock()
        self.ready_wait = ready_wait

    def client(self) -> DaemonClient:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def call(self, fn: Callable[[DaemonClient], T]) -> T:
        """Run `fn` against the daemon: waits while its model loads, reconnects once if it went
        away."""
        for attempt in range(2):
            client = self.client()
            deadline = time.monotonic() + self.ready_wait
            try:
                while True:
                    try:
                        return fn(client)
                    except NotReady as exc:
                        if "loading" not in exc.message or time.monotonic() > deadline:
                            raise
                        time.sleep(0.25)
            except DaemonUnreachable:
                with self._lock:
                    if self._client is client:
                        self._client = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def tool_errors(fn: F) -> F:
    """localrank's errors (the daemon's, or a tool's own) as tool errors with their message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LocalrankError as exc:
            raise ToolError(exc.message) from exc

    return wrapper  # type: ignore[return-value]


def _cited(citation: dict[str, Any]) -> dict[str, Any]:
    """A search result's citation as the tools give it: the file (or document id) and lines."""
    return {
        "source": citation.get("source") or citation["document_id"],
        "line_start": citation["line_start"],
        "line_end": citation["line_end"],
        "page": citation.get("page"),
    }


def _lines(text: str, start: int | None, end: int | None) -> tuple[str, int, int, int]:
    """(the text of lines start..end, 1-based inclusive, the range used, the line count)."""
    lines = text.splitlines(keepends=True)
    total = len(lines)
    first = start or 1
    last = min(end or total, total)
    if first > total:
        raise InvalidInput(f"line_start {first} is past the end: the document has {total} lines")
    if last < first:
        raise InvalidInput(f"line_end {end} is before line_start {first}")
    return "".join(lines[first - 1 : last]), first, last, total


def build_server(access: DaemonAccess, *, allow_index: bool = False) -> MCPServer:
    """The MCP server with localrank's tools (the indexing ones only with `allow_index`)."""
    server: MCPServer = MCPServer(
        "localrank",
        title="localrank: local search",
        version=__version__,
        instructions=INSTRUCTIONS,
    )
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    def names(requested: list[str] | None) -> list[str]:
        if requested:
            return requested
        model = access.client().health.get("fingerprint")
        everything = access.call(lambda c: c.collections())
        usable = [c["name"] for c in everything if model is None or c["fingerprint"] == model]
        if not usable:
            raise NotFound(
                "there are no collections to search yet: index a folder first "
                "(`localrank index PATH --collection NAME`)"
            )
        return usable

    @server.tool(annotations=read_only)
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
    ) -> dict[str, Any]:
        """Search the user's local collections (notes, documents, code). Each result has the
        passage text, a relevance score and a citation: the source file, the line range and,
        for PDFs, the page; `also_in` cites where else the same passage appears. Read more
        around a result with `get`."""
        merged: list[dict[str, Any]] = []
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

    @server.tool(annotations=read_only)
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
    ) -> dict[str, Any]:
        """Read a document (or the lines line_start..line_end of it) from a collection: the
        text a search result cites, with what surrounds it."""
        tried = [collection] if collection else [c["name"] for c in access.call(_collections)]
        path = Path(document).expanduser()
        for name in tried:
            try:
                doc = access.call(lambda c, n=name: c.document(n, document))  # type: ignore[misc]
            except NotFound:
                if not path.is_absolute():
                    continue
                try:
                    doc = access.call(
                        lambda c, n=name: c.document_from(n, path.as_posix())  # type: ignore[misc]
                    )
                except NotFound:
                    continue
            text, first, last, total = _lines(doc["text"], line_start, line_end)
            return {
                "collection": name,
                "document_id": doc["id"],
                "source": doc.get("source"),
                "metadata": doc.get("metadata", {}),
                "line_start": first,
                "line_end": last,
                "total_lines": total,
                "text": text,
            }
        where = f"collection {collection!r}" if collection else "any collection"
        raise NotFound(f"no document {document!r} in {where}")

    @server.tool(annotations=read_only)
    @tool_errors
    def collections() -> dict[str, Any]:
        """The user's collections: name, model, how many documents and chunks each holds."""
        rows = access.call(_collections)
        keep = ("name", "model", "dim", "documents", "chunks", "created")
        return {"collections": [{k: c.get(k) for k in keep} for c in rows]}

    @server.tool(annotations=read_only)
    @tool_errors
    def status() -> dict[str, Any]:
        """The daemon's state: the model it serves, ingestion jobs in progress, and the folders
        it keeps indexed (with what each is doing)."""

        def read(c: DaemonClient) -> dict[str, Any]:
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


def _collections(client: DaemonClient) -> list[dict[str, Any]]:
    return client.collections()
