"""The search API: collections, documents, jobs, search, reindex, compact.

Handlers only parse and shape; `CollectionService` does the work. Errors are raised as
localrank.errors types; the app's middleware renders them in this dialect's shape.
"""

from __future__ import annotations

from aiohttp import web

from localrank.collections import CollectionService, SearchRequest
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


async def search(request: web.Request) -> web.Response:
    req = SearchRequest.from_json(await read_body(request))
    return web.json_response(await _service(request).search(req))


async def compact(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).compact())


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
    error_statuses=(409,),  # a name taken, or a collection bound to another model
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
            Operation("One collection.", response=_COLLECTION),
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
                "List documents (without text), paged by id.",
                query=(
                    Param("limit", INT, "1..1000 (default 100)."),
                    Param("after", STR, "The last id of the previous page."),
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
            Operation("A job's state and progress.", response=_JOB),
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
