"""The search API: collections, documents, jobs, search, reindex, compact.

Handlers only parse and shape; `CollectionService` does the work. Errors are raised as
localrank.errors types; the app's middleware renders them in this dialect's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from localrank.collections import CollectionService, FolderOptions, SearchRequest
from localrank.errors import InvalidInput
from localrank.serve.api import (
    BOOL,
    INT,
    OBJ,
    STR,
    Dialect,
    Operation,
    Param,
    arr,
    localrank_error_body,
    route,
)
from localrank.serve.dialects.fields import INSTRUCTION, MINILM
from localrank.serve.parsing import read_body
from localrank.serve.state import collections


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer", param=name) from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be in {lo}..{hi}", param=name)
    return value


def _service(request: web.Request) -> CollectionService:
    return collections(request)


async def create_collection(request: web.Request) -> web.Response:
    body = await read_body(request)
    settings = body.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise InvalidInput("settings must be an object", param="settings")
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidInput("name must be a string", param="name")
    out = await _service(request).create_collection(name, settings=settings)
    return web.json_response(out, status=201)


async def list_collections(request: web.Request) -> web.Response:
    return web.json_response({"collections": await _service(request).list_collections()})


async def get_collection(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).get_collection(request.match_info["name"]))


async def delete_collection(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return web.json_response(await _service(request).delete_collection(name))


async def add_documents(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_body(request)
    background = body.get("async", False)
    if not isinstance(background, bool):
        raise InvalidInput("async must be true or false", param="async")
    docs = service.documents_from_request(body.get("documents"))
    out = await service.add_documents(request.match_info["name"], docs, background=background)
    return web.json_response(out, status=202 if background else 200)


async def list_documents(request: web.Request) -> web.Response:
    source = request.query.get("source")
    if source is not None:
        doc = await _service(request).find_document(request.match_info["name"], source)
        doc.pop("text", None)
        doc.pop("chunks", None)
        return web.json_response({"documents": [doc], "next_after": None})
    limit = _int_query(request, "limit", 100, 1, 1000)
    out = await _service(request).list_documents(
        request.match_info["name"], limit=limit, after=request.query.get("after")
    )
    return web.json_response(out)


async def get_document(request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(await _service(request).get_document(m["name"], m["doc_id"]))


async def delete_document(request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(await _service(request).delete_document(m["name"], m["doc_id"]))


async def reindex(request: web.Request) -> web.Response:
    body = await read_body(request) if request.can_read_body else {}
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput("force must be true or false", param="force")
    out = await _service(request).reindex(request.match_info["name"], force=force)
    return web.json_response(out, status=202)


async def list_jobs(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in ("queued", "running", "done", "failed"):
        raise InvalidInput("state must be queued, running, done or failed", param="state")
    limit = _int_query(request, "limit", 50, 1, 1000)
    return web.json_response({"jobs": await _service(request).list_jobs(limit=limit, state=state)})


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).get_job(request.match_info["job_id"]))


async def retry_job(request: web.Request) -> web.Response:
    out = await _service(request).retry_job(request.match_info["job_id"])
    return web.json_response(out, status=202)


async def search(request: web.Request) -> web.Response:
    req = SearchRequest.from_json(await read_body(request))
    return web.json_response(await _service(request).search(req))


async def compact(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).compact())


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", param=name)
    return value


def _folder(body: dict[str, Any]) -> tuple[Path, FolderOptions]:
    """The folder a request names (an absolute path on the daemon's machine) and how to read
    it."""
    raw = body.get("path")
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput("path must be a non-empty string", param="path")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise InvalidInput(
            f"path must be absolute ({raw!r} is not): the daemon does not share your working "
            "directory",
            param="path",
        )
    return path, FolderOptions.from_dict(
        {k: body[k] for k in ("include", "exclude", "ignore_files") if k in body}
    )


async def index_folder(request: web.Request) -> web.Response:
    body = await read_body(request)
    path, options = _folder(body)
    prune, watch = _bool(body, "prune", False), _bool(body, "watch", False)
    name = request.match_info["name"]
    service = _service(request)
    out = await service.index_folder(path, name, options=options, prune=prune, wait=False)
    if watch:
        out["watch"] = await service.add_watch(path, name, options=options)
    return web.json_response(out)


async def list_watches(request: web.Request) -> web.Response:
    return web.json_response({"watches": await _service(request).list_watches()})


async def add_watch(request: web.Request) -> web.Response:
    body = await read_body(request)
    path, options = _folder(body)
    name = body.get("collection")
    if not isinstance(name, str):
        raise InvalidInput("collection must be a string", param="collection")
    out = await _service(request).add_watch(path, name, options=options)
    return web.json_response(out, status=201)


async def remove_watch(request: web.Request) -> web.Response:
    raw = request.match_info["watch_id"]
    if not raw.isdigit():
        raise InvalidInput("a watch id is an integer", param="watch_id")
    return web.json_response(await _service(request).remove_watch(int(raw)))


_COLLECTION = {
    "name": "notes",
    "model": MINILM,
    "fingerprint": f"{MINILM}@982ecbb2c268:384:mean:...",
    "dim": 384,
    "created": "2025-01-01T00:00:00Z",
    "settings": {},
    "documents": 0,
    "chunks": 0,
}
_JOB = {
    "job_id": "j_01",
    "collection": "notes",
    "kind": "ingest",
    "state": "running",
    "total": 100,
    "done": 40,
    "failed": 0,
    "errors": [],
    "created": "...",
    "updated": "...",
}
_WATCH = {
    "id": 1,
    "collection": "notes",
    "path": "/home/me/notes",
    "options": {"include": ["*.md"], "exclude": [], "ignore_files": True},
    "created": "2025-01-01T00:00:00Z",
    "state": "watching",
    "polling": False,
    "last_sync": "2025-01-01T00:00:05Z",
    "indexed": 12,
    "removed": 0,
    "pending": 0,
    "errors": [],
}
_FOLDER_BODY = (
    Param(
        "path",
        STR,
        "Absolute path of a folder (or one file) on the daemon's machine.",
        required=True,
    ),
    Param("include", arr(STR), "Globs of files to read (default: notes and code files)."),
    Param("exclude", arr(STR), "Globs of files to leave out, besides lock and minified files."),
    Param("ignore_files", BOOL, "Honour .gitignore and .ignore files (default true)."),
)
_SEARCH_BODY = (
    Param("collection", STR, "Collection name.", required=True),
    Param("query", STR, "The query.", required=True),
    Param("top_k", INT, "1..1000 (default 10)."),
    Param("mode", STR, "hybrid (default), vector or keyword."),
    Param("rerank", BOOL, "Rerank the fused candidates (default: on for hybrid)."),
    Param("filter", OBJ, "Metadata key -> value or list of values."),
    INSTRUCTION,
    Param("candidates", INT, "Binary-scan candidates (1..100000)."),
)

DIALECT = Dialect(
    "collections",
    localrank_error_body,
    error_statuses=(409,),  # a name taken, a collection bound to another model, a job not failed
    routes=(
        route(
            "POST",
            "/v1/collections",
            create_collection,
            Operation(
                "Create a collection bound to the serving model.",
                status=201,
                body=(
                    Param("name", STR, "Collection name.", required=True),
                    Param("settings", OBJ, "chunk_tokens (16..32768), chunk_overlap (0..16384)."),
                ),
                example={"name": "notes", "settings": {"chunk_tokens": 512}},
                response=_COLLECTION,
            ),
        ),
        route(
            "GET",
            "/v1/collections",
            list_collections,
            Operation("Every collection with its counts.", response={"collections": [_COLLECTION]}),
        ),
        route(
            "GET",
            "/v1/collections/{name}",
            get_collection,
            Operation(
                "One collection, with how the store holds and searches its vectors (`index`: "
                "the engine, the vector type and index, e.g. PostgreSQL's `hnsw on vector(1024)`, "
                "`halfvec` above 2,000 dimensions, binary codes above 4,000, and the exact "
                "rescoring).",
                response={
                    **_COLLECTION,
                    "index": {
                        "engine": "postgresql",
                        "index": "hnsw on vector(1024)",
                        "index_type": "vector",
                        "rescoring": "exact cosine on the float32 vectors",
                    },
                },
            ),
        ),
        route(
            "DELETE",
            "/v1/collections/{name}",
            delete_collection,
            Operation(
                "Delete a collection and its documents.",
                response={"name": "notes", "deleted": True},
            ),
        ),
        route(
            "POST",
            "/v1/collections/{name}/documents",
            add_documents,
            Operation(
                "Upsert documents (chunked and embedded); async=true queues a job (202).",
                also=(202,),
                body=(
                    Param(
                        "documents",
                        arr(OBJ),
                        "{id, text, metadata?, source?} objects.",
                        required=True,
                    ),
                    Param("async", BOOL, "Queue a background job and answer its job_id."),
                ),
                example={"documents": [{"id": "a.md", "text": "The cat sat.", "metadata": {}}]},
                response={"job_id": "j_01", "state": "queued", "total": 1},
            ),
        ),
        route(
            "GET",
            "/v1/collections/{name}/documents",
            list_documents,
            Operation(
                "List documents (without text), paged by id; or the one read from a file.",
                query=(
                    Param("limit", INT, "1..1000 (default 100)."),
                    Param("after", STR, "The last id of the previous page."),
                    Param("source", STR, "Only the document read from this file (absolute)."),
                ),
                response={"documents": [{"id": "a.md"}], "next_after": None},
            ),
        ),
        # Document ids may contain '/' (the CLI uses relative file paths).
        route(
            "GET",
            "/v1/collections/{name}/documents/{doc_id:.+}",
            get_document,
            Operation(
                "A document with its chunks and their citations.",
                response={
                    "id": "a.md",
                    "text": "The cat sat.",
                    "chunks": [
                        {"chunk_id": 1, "ordinal": 0, "text": "The cat sat.", "citation": "a.md"}
                    ],
                },
            ),
        ),
        route(
            "DELETE",
            "/v1/collections/{name}/documents/{doc_id:.+}",
            delete_document,
            Operation("Delete one document.", response={"id": "a.md", "deleted": True}),
        ),
        route(
            "POST",
            "/v1/collections/{name}/reindex",
            reindex,
            Operation(
                "Re-embed a collection with the serving model (a job).",
                status=202,
                body=(Param("force", BOOL, "Re-embed even when the model did not change."),),
                example={"force": False},
                response={"job_id": "j_02", "state": "queued", "total": 10},
            ),
        ),
        route(
            "POST",
            "/v1/collections/{name}/index",
            index_folder,
            Operation(
                "Index a folder on the daemon's machine into a collection (created if missing): "
                "new and changed files are embedded by a job (job_id; null when nothing "
                "changed), unchanged ones skipped by content hash, unreadable ones listed in "
                "skipped. watch=true also keeps the folder indexed from now on.",
                body=(
                    *_FOLDER_BODY,
                    Param("prune", BOOL, "Remove documents whose file is gone (default false)."),
                    Param("watch", BOOL, "Also watch the folder (default false)."),
                ),
                example={"path": "/home/me/notes", "prune": True, "watch": True},
                response={
                    "collection": "notes",
                    "path": "/home/me/notes",
                    "files": 12,
                    "changed": 2,
                    "unchanged": 10,
                    "skipped": [],
                    "pruned": 0,
                    "job_id": "j_03",
                    "watch": _WATCH,
                },
            ),
        ),
        route(
            "GET",
            "/v1/watches",
            list_watches,
            Operation(
                "Watched folders and what each is doing (state, files indexed and removed, "
                "errors).",
                response={"watches": [_WATCH]},
            ),
        ),
        route(
            "POST",
            "/v1/watches",
            add_watch,
            Operation(
                "Keep a folder indexed into a collection: it is synced now, then on every change, "
                "and after every restart.",
                status=201,
                body=(Param("collection", STR, "Collection name.", required=True), *_FOLDER_BODY),
                example={"collection": "notes", "path": "/home/me/notes"},
                response=_WATCH,
            ),
        ),
        route(
            "DELETE",
            "/v1/watches/{watch_id}",
            remove_watch,
            Operation(
                "Stop watching a folder (its documents stay).", response={"removed": [_WATCH]}
            ),
        ),
        route(
            "GET",
            "/v1/jobs",
            list_jobs,
            Operation(
                "Recent jobs, newest first.",
                query=(
                    Param("state", STR, "queued, running, done or failed."),
                    Param("limit", INT, "1..1000 (default 50)."),
                ),
                response={"jobs": [_JOB]},
            ),
        ),
        route(
            "GET",
            "/v1/jobs/{job_id}",
            get_job,
            Operation(
                "A job's state and progress.",
                "While the job's store operations fail (the database is away), `store_failure` "
                "says why and for how long; past `job_failure_timeout_s` (300 s) the job is "
                "`failed` with the reason, even before the database can record it. When the "
                "database cannot be read, the daemon running the job answers from what it knows "
                "(`stale: true`); any other job is a 503.",
                response=_JOB,
            ),
        ),
        route(
            "POST",
            "/v1/jobs/{job_id}/retry",
            retry_job,
            Operation(
                "Queue a failed job again: it resumes where it stopped (documents already "
                "stored are not embedded again). 404 for an unknown job, 409 for one that has "
                "not failed.",
                response={**_JOB, "state": "queued"},
                status=202,
            ),
        ),
        route(
            "POST",
            "/v1/search",
            search,
            Operation(
                "Search a collection: hybrid (keyword + vector, reranked), vector or keyword.",
                body=_SEARCH_BODY,
                example={"collection": "notes", "query": "where did the cat sit?", "top_k": 5},
                response={
                    "collection": "notes",
                    "model": MINILM,
                    "mode": "hybrid",
                    "reranked": True,
                    "results": [],
                    "timings_ms": {},
                },
            ),
        ),
        route(
            "POST",
            "/v1/compact",
            compact,
            Operation(
                "Reclaim space (VACUUM), trim tombstones, old jobs and the cache.",
                response={
                    "bytes_before": 0,
                    "bytes_after": 0,
                    "reclaimed": 0,
                    "tombstones": 0,
                    "cache_rows_trimmed": 0,
                    "jobs_removed": 0,
                },
            ),
        ),
    ),
)
