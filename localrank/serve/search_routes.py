"""The search API (DESIGN section 5): collections, documents, jobs, search, reindex, compact.

Handlers only parse and shape; `SearchService` does the work, with SQLite in worker threads.
Errors are raised as localrank.errors types; the app's middleware renders them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from localrank.config import Settings
from localrank.documents import parse_documents
from localrank.errors import InvalidInput
from localrank.ingest import EmbedderGetter, Ingestor, IngestSettings
from localrank.search import SearchRequest, SearchService
from localrank.serve.http import read_json
from localrank.store import Store

SEARCH_KEY = web.AppKey("search", SearchService)


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json(request)


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


def _service(request: web.Request) -> SearchService:
    return request.app[SEARCH_KEY]


async def create_collection(request: web.Request) -> web.Response:
    body = await _body(request)
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
    body = await _body(request)
    background = body.get("async", False)
    if not isinstance(background, bool):
        raise InvalidInput("async must be true or false", param="async")
    docs = parse_documents(
        body.get("documents"), max_bytes=service.ingestor.settings.max_document_bytes
    )
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
    body = await _body(request) if request.can_read_body else {}
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
    req = SearchRequest.from_json(await _body(request))
    return web.json_response(await _service(request).search(req))


async def compact(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).compact())


search_routes: list[web.RouteDef] = [
    web.post("/v1/collections", create_collection),
    web.get("/v1/collections", list_collections),
    web.get("/v1/collections/{name}", get_collection),
    web.delete("/v1/collections/{name}", delete_collection),
    web.post("/v1/collections/{name}/documents", add_documents),
    web.get("/v1/collections/{name}/documents", list_documents),
    # Document ids may contain '/' (the CLI uses relative file paths).
    web.get("/v1/collections/{name}/documents/{doc_id:.+}", get_document),
    web.delete("/v1/collections/{name}/documents/{doc_id:.+}", delete_document),
    web.post("/v1/collections/{name}/reindex", reindex),
    web.get("/v1/jobs", list_jobs),
    web.get("/v1/jobs/{job_id}", get_job),
    web.post("/v1/search", search),
    web.post("/v1/compact", compact),
]


def make_search_ctx(
    settings: Settings,
    embedder_getter: EmbedderGetter,
    *,
    ingest_settings: IngestSettings | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: open the store under the user data dir (LOCALRANK_HOME moves it),
    publish the SearchService under SEARCH_KEY, run the job runner (which resumes jobs left
    unfinished by a previous run), and close both on shutdown."""

    async def search_ctx(app: web.Application) -> AsyncIterator[None]:
        store = await asyncio.to_thread(Store, settings.paths.database)
        service = SearchService(store, embedder_getter, Ingestor(store, embedder_getter,
                                                                 ingest_settings))  # fmt: skip
        app[SEARCH_KEY] = service
        runner = asyncio.create_task(service.runner.run_forever(), name="localrank-jobs")
        try:
            yield
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await asyncio.to_thread(store.close)

    return search_ctx
