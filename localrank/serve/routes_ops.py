"""Operations: /health, /metrics."""

from __future__ import annotations

import time

from aiohttp import web

from localrank import __version__
from localrank.serve.http import REGISTRY_KEY
from localrank.serve.state import STATE_KEY


async def health(request: web.Request) -> web.Response:
    """200 when the model is ready; 503 while it loads or when it failed (with the reason)."""
    state = request.app[STATE_KEY]
    uptime = round(time.monotonic() - state.started, 3)
    if state.service is None:
        body: dict[str, object] = {"status": "error" if state.load_error else "loading",
                                   "uptime_s": uptime, "version": __version__}
        if state.load_error is not None:
            body["error"] = state.load_error.message
        return web.json_response(body, status=503)
    info = state.service.info
    return web.json_response({
        "status": "ok",
        "version": __version__,
        "uptime_s": uptime,
        "load_seconds": state.load_seconds,
        "queue_depth": state.service.worker.depth,
        **info.to_dict(),
    })


async def metrics(request: web.Request) -> web.Response:
    text = request.app[REGISTRY_KEY].render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


routes = [
    web.get("/health", health),
    web.get("/health/", health),
    web.get("/metrics", metrics),
]
