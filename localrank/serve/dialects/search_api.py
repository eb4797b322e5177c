"""The search API: collections, documents, jobs, search, reindex, compact.

Handlers receive their request already checked against its declaration (`search_requests`)
and shape the answer; `CollectionService` does the work. Errors are raised as
localrank.errors types; the app's middleware renders them in this dialect's shape.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from localrank.collections import CollectionService, DocumentIn, SearchRequest
from localrank.serve.api import Dialect, Operation, localrank_error_body, route
from localrank.serve.dialects.search_requests import (
    CollectionPath,
    DocumentPage,
    DocumentPath,
    IndexFolder,
    JobPath,
    JobsQuery,
    NewCollection,
    NewDocuments,
    NewWatch,
    Reindex,
    WatchPath,
)
from localrank.serve.dialects.shared import MINILM
from localrank.serve.state import collections


def _service(request: web.Request) -> CollectionService:
    return collections(request)


def _folder(raw: str) -> Path:
    return Path(raw).expanduser()


async def create_collection(request: web.Request, req: NewCollection) -> web.Response:
    out = await _service(request).create_collection(req.name, settings=req.settings)
    return web.json_response(out, status=201)


async def list_collections(request: web.Request) -> web.Response:
    return web.json_response({"collections": await _service(request).list_collections()})


async def get_collection(request: web.Request, req: CollectionPath) -> web.Response:
    return web.json_response(await _service(request).get_collection(req.name))


async def delete_collection(request: web.Request, req: CollectionPath) -> web.Response:
    return web.json_response(await _service(request).delete_collection(req.name))


async def add_documents(request: web.Request, req: NewDocuments) -> web.Response:
    service = _service(request)
    docs: list[DocumentIn] = service.check_documents(req.documents)
    out = await service.add_documents(req.name, docs, background=req.background)
    return web.json_response(out, status=202 if req.background else 200)


async def list_documents(request: web.Request, req: DocumentPage) -> web.Response:
    if req.source is not None:
        doc = await _service(request).find_document(req.name, req.source)
        doc.pop("text", None)
        doc.pop("chunks", None)
        return web.json_response({"documents": [doc], "next_after": None})
    out = await _service(request).list_documents(req.name, limit=req.limit, after=req.after)
    return web.json_response(out)


async def get_document(request: web.Request, req: DocumentPath) -> web.Response:
    return web.json_response(await _service(request).get_document(req.name, req.doc_id))


async def delete_document(request: web.Request, req: DocumentPath) -> web.Response:
    return web.json_response(await _service(request).delete_document(req.name, req.doc_id))


async def reindex(request: web.Request, req: Reindex) -> web.Response:
    out = await _service(request).reindex(req.name, force=req.force)
    return web.json_response(out, status=202)


async def list_jobs(request: web.Request, req: JobsQuery) -> web.Response:
    jobs = await _service(request).list_jobs(limit=req.limit, state=req.state)
    return web.json_response({"jobs": jobs})


async def get_job(request: web.Request, req: JobPath) -> web.Response:
    return web.json_response(await _service(request).get_job(req.job_id))


async def retry_job(request: web.Request, req: JobPath) -> web.Response:
    out = await _service(request).retry_job(req.job_id)
    return web.json_response(out, status=202)


async def search(request: web.Request, req: SearchRequest) -> web.Response:
    return web.json_response(await _service(request).search(req))


async def compact(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).compact())


async def index_folder(request: web.Request, req: IndexFolder) -> web.Response:
    path, name, service = _folder(req.path), req.name, _service(request)
    # A sub-resource of an existing collection, like its documents: indexing does not bring a
    # deleted collection back (the CLI and the MCP server create it first; the daemon client).
    await service.get_collection(name)
    out = await service.index_folder(path, name, options=req.options, prune=req.prune, wait=False)
    if req.watch:
        out["watch"] = await service.add_watch(path, name, options=req.options)
    return web.json_response(out)


async def list_watches(request: web.Request) -> web.Response:
    return web.json_response({"watches": await _service(request).list_watches()})


async def add_watch(request: web.Request, req: NewWatch) -> web.Response:
    service = _service(request)
    out = await service.add_watch(_folder(req.path), req.collection, options=req.options)
    return web.json_response(out, status=201)


async def remove_watch(request: web.Request, req: WatchPath) -> web.Response:
    return web.json_response(await _service(request).remove_watch(req.watch_id))


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
                example={"force": False},
                body_required=False,
                response={"job_id": "j_02", "state": "queued", "total": 10},
            ),
        ),
        route(
            "POST",
            "/v1/collections/{name}/index",
            index_folder,
            Operation(
                "Index a folder on the daemon's machine into a collection (404 when it does "
                "not exist: POST /v1/collections creates it): new and changed files are "
                "embedded by a job (job_id; null when nothing changed), unchanged ones skipped "
                "by content hash, unreadable ones listed in skipped. watch=true also keeps the "
                "folder indexed from now on.",
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
