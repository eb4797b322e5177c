"""The app factory: `make_app(settings) -> web.Application`.

Routes come from the dialect registry (`serve/dialects`). The model loads in a thread after the
server starts listening, so /health can say 503 "loading" meanwhile; everything that needs the
model answers 503 until it is ready. The collections (store, ingestion, job runner) open at
startup and reach the model through the same scheduler as every HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

from aiohttp import web

from localrank.collections import CollectionService, IngestSettings, WatchSettings
from localrank.config import Settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine, load_reranker
from localrank.engine.tiktoken_ids import cl100k
from localrank.errors import LocalrankError
from localrank.ops import allocator
from localrank.serve.api import DialectIndex
from localrank.serve.dialects import DEFAULT_DIALECT, DIALECTS
from localrank.serve.metrics import standard_registry
from localrank.serve.middleware import error_middleware, request_id_middleware
from localrank.serve.model_service import DaemonCrossEncoder, DaemonEmbeddingModel, ModelService
from localrank.serve.requests import endpoint
from localrank.serve.reranking import CrossEncoderSlot, RerankerLoader
from localrank.serve.security import make_security_middlewares, setup_security
from localrank.serve.state import COLLECTIONS_KEY, DIALECTS_KEY, METRICS_KEY, STATE_KEY, DaemonState
from localrank.serve.threads import in_own_thread
from localrank.store import open_store

log = logging.getLogger(__name__)
EngineLoader = Callable[[Settings], Engine]
CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def _model_ctx(loader: EngineLoader | None, reranker_loader: RerankerLoader) -> CleanupCtx:
    async def model_ctx(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE_KEY]
        settings = state.settings
        # The real loader reports its phases (and download bytes) to /health.
        load_model = loader or partial(
            load_engine, progress=state.progress, stored=state.stored_fingerprints
        )
        slot = CrossEncoderSlot(settings, reranker_loader)

        async def load() -> None:
            started = time.monotonic()
            try:
                engine = await in_own_thread(load_model, settings, name="localrank-model-load")
            except LocalrankError as exc:
                log.error("model failed to load: %s", exc.message)
                state.load_error = exc
            except Exception as exc:  # a bug or a library failure: still report, never hang
                log.exception("model failed to load")
                state.load_error = LocalrankError(f"{type(exc).__name__}: {exc}")
            else:
                state.models = ModelService(
                    engine,
                    app[METRICS_KEY],
                    max_batch_tokens=engine.max_batch_tokens,
                    max_batch_size=settings.max_batch_size,
                    batch_wait_ms=settings.batch_wait_ms,
                    preempt_ms=settings.preempt_ms,
                    queue_size=settings.queue_size,
                    cache_size=settings.cache_size,
                    max_inputs=settings.max_inputs,
                    reranker=slot,
                )
                state.embedding_model_view = DaemonEmbeddingModel(state.models)
                state.cross_encoder_view = DaemonCrossEncoder(state.models)
                if settings.reranker and settings.preload_reranker:
                    state.preloading = asyncio.ensure_future(slot.preload())
                state.load_seconds = time.monotonic() - started
                # Serving already; make later requests faster in the background (in a thread
                # that ends: serve/threads.py says why).
                state.optimizing = asyncio.ensure_future(
                    in_own_thread(_optimize, engine, name="localrank-optimize")
                )
                # tiktoken's cl100k_base (2 s of CPU to read), for OpenAI token arrays: read once
                # serving, not beside the model's load (it would slow the cold start on 2 cores).
                threading.Thread(target=cl100k, name="localrank-cl100k", daemon=True).start()
            finally:
                state.ready.set()

        task = state.loading = asyncio.create_task(load(), name="localrank-load")
        try:
            yield
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a thread cannot be cancelled; let the load finish
                if state.optimizing is not None:
                    if state.models is not None:
                        state.models.engine.stop_optimizing()  # ends at its next step
                    await state.optimizing  # likewise the background optimisation
                if state.preloading is not None:
                    await state.preloading
            await slot.close()
            if state.models is not None:
                await asyncio.to_thread(state.models.close)
                state.models.engine.close()

    return model_ctx


def _optimize(engine: Engine) -> int:
    """Engine.optimize, in the background: a failure costs speed, never service. Then the
    allocator's free pages go back to the system: what loading left free (the int8 load's
    float32 model, 2 GB for the 0.6B shape) stayed in glibc's arenas until the model worker's
    first idle trim, so a daemon that had served nothing reported its load's peak."""
    try:
        return engine.optimize()
    except Exception:
        log.exception("background optimisation failed; serving as loaded")
        return 0
    finally:
        allocator.trim()


def _collections_ctx(ingest: IngestSettings | None) -> CleanupCtx:
    """Open the store under the user data dir (LOCALRANK_HOME moves it), publish the
    CollectionService, prepare the collections for search in the background (so the first
    search is as fast as the rest; /health reports how far it got), run the job runner (which
    resumes jobs a previous run left unfinished) and the folder watcher (which resumes every
    registered watch), and close all of it on shutdown."""

    async def collections_ctx(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE_KEY]
        settings = state.settings
        try:
            store = state.store = await asyncio.to_thread(
                lambda: open_store(settings.store_location, lease_seconds=settings.job_lease_s)
            )
        finally:
            state.store_opened.set()  # the model's load may wait for it (stored_fingerprints)
        watch = WatchSettings(
            debounce_ms=settings.watch_debounce_ms,
            step_ms=min(100, settings.watch_debounce_ms),
            polling=settings.watch_polling,
        )
        service = CollectionService(
            store,
            state.embedder,
            ingest,
            watch=watch,
            reranker=state.reranker,
            rerank_candidates=settings.rerank_candidates,
            job_failure_timeout_s=settings.job_failure_timeout_s,
        )
        app[COLLECTIONS_KEY] = service
        preload = asyncio.create_task(service.prepare_search(), name="localrank-search-preload")
        tasks = [
            asyncio.create_task(service.runner.run_forever(), name="localrank-jobs"),
            asyncio.create_task(service.watcher.run_forever(), name="localrank-watches"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await service.close()  # no more warm-up searches
            state.store = None
            await asyncio.to_thread(store.close)  # stops a running preload first
            await preload

    return collections_ctx


def make_app(
    settings: Settings,
    *,
    loader: EngineLoader | None = None,
    ingest: IngestSettings | None = None,
    reranker_loader: RerankerLoader = load_reranker,
) -> web.Application:
    """The daemon: every dialect's routes, the model (loaded by `loader` in a thread; None:
    `load_engine`, downloading if need be) and the collections. Tests pass a `loader` to serve a
    model of their choosing."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_id_middleware, error_middleware, *make_security_middlewares(settings)],
    )
    setup_security(app, settings)
    app[METRICS_KEY] = standard_registry()
    app[STATE_KEY] = DaemonState(settings)
    app[DIALECTS_KEY] = DialectIndex(DIALECTS, DEFAULT_DIALECT)
    for _, r in app[DIALECTS_KEY].routes():
        if r.method == "GET":
            app.router.add_get(r.path, endpoint(r))  # and HEAD, as aiohttp's web.get does
        else:
            app.router.add_route(r.method, r.path, endpoint(r))
    app.cleanup_ctx.append(_model_ctx(loader, reranker_loader))
    app.cleanup_ctx.append(_collections_ctx(ingest))
    return app
