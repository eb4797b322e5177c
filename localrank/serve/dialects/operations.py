"""Operations: /health, /metrics, /openapi.json and the offline /docs page."""

from __future__ import annotations

import time

from aiohttp import web

from localrank import __version__
from localrank.serve.api import Dialect, Operation, localrank_error_body, route
from localrank.serve.dialects.shared import MINILM
from localrank.serve.docs_page import CSP, render_html
from localrank.serve.openapi import build_spec
from localrank.serve.state import COLLECTIONS_KEY, METRICS_KEY, STATE_KEY


async def health(request: web.Request) -> web.Response:
    """200 when the model is ready; 503 while it downloads or loads (with the phase, and bytes
    done and total while downloading) or when it failed (with the reason). `store` says whether
    the database answers and its operations succeed; when not, the status is "degraded"."""
    state = request.app[STATE_KEY]
    uptime = round(time.monotonic() - state.started, 3)
    service = request.app.get(COLLECTIONS_KEY)
    # Whether searches run at full speed yet: they are answered either way.
    collections = service.search_readiness() if service is not None else None
    store = await service.store_status() if service is not None else None
    if state.models is None:
        progress = state.progress.snapshot()
        status = "downloading" if "download" in progress else "loading"
        body: dict[str, object] = {
            "status": "error" if state.load_error else status,
            "uptime_s": uptime,
            "version": __version__,
            "collections": collections,
            "store": store,
        }
        if state.load_error is not None:
            body["error"] = state.load_error.message
        else:
            body["loading"] = progress
        return web.json_response(body, status=503)
    # A store that is down degrades the daemon but does not make it unhealthy: 200 still. It
    # embeds and reranks without the store (most of its routes); a supervisor that restarted it
    # would not bring the database back, and a load balancer that took it out would take out
    # every daemon sharing that database at once, for every route. The routes that need the
    # store answer 503 store_unavailable meanwhile; `status` and `store` say why.
    degraded = store is not None and store["status"] != "ok"
    return web.json_response(
        {
            "status": "degraded" if degraded else "ok",
            "version": __version__,
            "uptime_s": uptime,
            "load_seconds": state.load_seconds,
            "queue_depth": state.models.queue_depth,
            # Which store this daemon serves: the CLI talks to a daemon only when it is its own.
            "database": state.settings.store_display,
            "store": store,
            "collections": collections,
            **state.models.info.to_dict(),
            "rerank_method": state.models.rerank_status()["rerank_method"],
            "reranker": state.models.rerank_status(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS_KEY].render()
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_spec(request.app))


async def docs(request: web.Request) -> web.Response:
    html = render_html(build_spec(request.app))
    return web.Response(
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": CSP},
    )


HEALTH = Operation(
    "Readiness: 200 with the model, backend, device, dtype (and why it was chosen) and dim; "
    "503 while loading, or downloading (with bytes done and total), or after a failure. "
    "`collections` says whether searches are ready to run at full speed (every collection's "
    "index in memory, the search threads warm); they are answered before that too, the first "
    "ones may wait for their collection to load. `store` says whether the database answers and "
    'its operations succeed: `{"status": "unavailable", "reason": ...}` when it is down or its '
    'operations keep failing, and then `status` is "degraded", still 200: embedding and '
    "reranking work without it, the routes that need it answer 503 meanwhile.",
    response={
        "status": "ok",
        "store": {"status": "ok"},
        "collections": {"ready": True, "loaded": 2, "total": 2},
        "model": MINILM,
        "backend": "torch",
        "device": "cpu",
        "dtype": "float32",
        "dtype_reason": "CPU (x86_64) has no native bfloat16 (...): float32 is faster and exact",
        "dim": 384,
    },
)

DIALECT = Dialect(
    "operations",
    localrank_error_body,
    (
        route("GET", "/health", health, HEALTH),
        route("GET", "/health/", health, HEALTH),
        route(
            "GET",
            "/metrics",
            metrics,
            Operation(
                "Prometheus metrics: requests and latency per route, queue depth, batch sizes and "
                "tokens, cache hits, truncations, errors.",
                content_type="text/plain",
                response="localrank_requests_total{...} 3\n",
            ),
        ),
        route(
            "GET",
            "/openapi.json",
            openapi_json,
            Operation("This OpenAPI 3.1 document.", response={"openapi": "3.1.0"}),
        ),
        route(
            "GET",
            "/docs",
            docs,
            Operation("This page: every route, rendered offline.", content_type="text/html"),
        ),
    ),
)
