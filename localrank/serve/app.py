"""The app factory: `make_app(settings) -> web.Application`.

The model loads in a thread after the server starts listening, so /health can say 503
"loading" meanwhile; everything that needs the model answers 503 until it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from localrank.config import Settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine
from localrank.errors import LocalrankError
from localrank.logs import request_id_middleware
from localrank.serve import (
    routes_cohere,
    routes_docs,
    routes_native,
    routes_ollama,
    routes_openai,
    routes_ops,
    routes_tei,
)
from localrank.serve.embedding import EmbeddingService, StoreEmbedder
from localrank.serve.http import REGISTRY_KEY, error_middleware
from localrank.serve.metrics import standard_registry
from localrank.serve.search_routes import make_search_ctx, search_routes
from localrank.serve.security import make_security_middlewares, setup_security
from localrank.serve.state import STATE_KEY, DaemonState

log = logging.getLogger(__name__)

EngineLoader = Callable[[Settings], Engine]


def _model_ctx(loader: EngineLoader) -> Callable[[web.Application], AsyncIterator[None]]:
    async def model_ctx(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE_KEY]
        settings = state.settings

        async def load() -> None:
            started = time.monotonic()
            try:
                engine = await asyncio.to_thread(loader, settings)
            except LocalrankError as exc:
                log.error("model failed to load: %s", exc.message)
                state.load_error = exc
            except Exception as exc:  # a bug or a library failure: still report, never hang
                log.exception("model failed to load")
                state.load_error = LocalrankError(f"{type(exc).__name__}: {exc}")
            else:
                state.service = EmbeddingService(
                    engine, app[REGISTRY_KEY], max_batch_tokens=engine.max_batch_tokens,
                    max_batch_size=settings.max_batch_size, batch_wait_ms=settings.batch_wait_ms,
                    queue_size=settings.queue_size, cache_size=settings.cache_size,
                    max_inputs=settings.max_inputs)
                state.store_embedder = StoreEmbedder(state.service)
                state.load_seconds = time.monotonic() - started
            finally:
                state.ready.set()

        task = asyncio.create_task(load(), name="localrank-load")
        try:
            yield
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a thread cannot be cancelled; let the load finish
            if state.service is not None:
                await asyncio.to_thread(state.service.close)
                state.service.engine.close()

    return model_ctx


def make_app(settings: Settings, *, loader: EngineLoader = load_engine) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_id_middleware, error_middleware,
                     *make_security_middlewares(settings)],
    )
    setup_security(app, settings)
    app[REGISTRY_KEY] = standard_registry()
    state = DaemonState(settings)
    app[STATE_KEY] = state
    app.cleanup_ctx.append(_model_ctx(loader))
    app.cleanup_ctx.append(make_search_ctx(settings, state.embedder))
    app.add_routes(routes_ops.routes)
    app.add_routes(routes_native.routes)
    app.add_routes(routes_openai.routes)
    app.add_routes(search_routes)
    app.add_routes(routes_cohere.routes)
    app.add_routes(routes_tei.routes)
    app.add_routes(routes_ollama.routes)
    app.add_routes(routes_docs.routes)
    return app
