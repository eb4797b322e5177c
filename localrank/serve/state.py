"""The daemon's state, typed app keys, and the accessors route handlers use."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from localrank.collections import CollectionService, CrossEncoderModel, EmbeddingModel
from localrank.config import Settings
from localrank.engine.progress import LoadProgress
from localrank.errors import LocalrankError, NotReady
from localrank.serve.api import DialectIndex
from localrank.serve.metrics import Registry
from localrank.serve.model_service import DaemonCrossEncoder, DaemonEmbeddingModel, ModelService
from localrank.store import Store

log = logging.getLogger(__name__)
# How long the model's load waits for the store to open before it chooses a dtype without
# knowing what the collections hold (the store opens in milliseconds; the load reaches the
# choice a second or more in).
STORE_WAIT_S = 30.0


@dataclass
class DaemonState:
    """What the model loader publishes: the embedding service once ready, or why it is not."""

    settings: Settings
    started: float = field(default_factory=time.monotonic)
    models: ModelService | None = None
    embedding_model_view: DaemonEmbeddingModel | None = None
    cross_encoder_view: DaemonCrossEncoder | None = None
    load_error: LocalrankError | None = None
    load_seconds: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # What the loader is doing meanwhile (resolving, downloading with bytes, loading, warming).
    progress: LoadProgress = field(default_factory=LoadProgress)
    # The model load (its thread cannot be interrupted; cancelling this stops waiting for it).
    loading: asyncio.Task[None] | None = None
    # Engine.optimize running in a thread once the model serves (awaited at shutdown).
    optimizing: asyncio.Future[int] | None = None
    # Loading the reranker at startup (preload_reranker), awaited at shutdown.
    preloading: asyncio.Future[None] | None = None
    # The store once the collections opened it (None after a failed open or once closed);
    # `store_opened` is set either way, for the load thread waiting in `stored_fingerprints`.
    store: Store | None = None
    store_opened: threading.Event = field(default_factory=threading.Event)

    def stored_fingerprints(self, wait_s: float = STORE_WAIT_S) -> list[str]:
        """The fingerprints the collections are bound to (called from the model's load thread,
        so that dtype "auto" keeps the precision they hold); none when the store is not open
        within `wait_s` or cannot be read."""
        self.store_opened.wait(wait_s)
        store = self.store
        if store is None:
            return []
        try:
            return store.collection_fingerprints()
        except Exception:  # closed meanwhile, unreachable: the choice goes on without them
            log.warning("could not list the collections' fingerprints", exc_info=True)
            return []

    def ready_models(self) -> ModelService:
        """The loaded model's service, or 503 with why there is none."""
        if self.models is not None:
            return self.models
        if self.load_error is not None:
            raise NotReady(f"the model failed to load: {self.load_error.message}")
        if self.progress.downloading:
            raise NotReady("the model is still downloading (GET /health shows the progress)")
        raise NotReady("the model is still loading")

    def embedder(self) -> EmbeddingModel:
        """The model as the collections layer sees it (503 until it is loaded)."""
        self.ready_models()
        assert self.embedding_model_view is not None
        return self.embedding_model_view

    def reranker(self) -> CrossEncoderModel | None:
        """The cross-encoder as the collections layer sees it: None while the model loads or
        when none is configured (search then reranks by cosine, as without one)."""
        r = self.cross_encoder_view
        return r if r is not None and r.available else None


STATE_KEY = web.AppKey("state", DaemonState)
METRICS_KEY = web.AppKey("metrics", Registry)
DIALECTS_KEY = web.AppKey("dialects", DialectIndex)
COLLECTIONS_KEY = web.AppKey("collections", CollectionService)


def model_service(request: web.Request) -> ModelService:
    """The embedding service behind every embed and rerank route (503 until loaded)."""
    return request.app[STATE_KEY].ready_models()


def collections(request: web.Request) -> CollectionService:
    """The collection service behind the search API."""
    return request.app[COLLECTIONS_KEY]
