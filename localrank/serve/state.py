"""The daemon's state, typed app keys, and the accessors route handlers use."""

from __future__ import annotations

import asyncio
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
    # Engine.optimize running in a thread once the model serves (awaited at shutdown).
    optimizing: asyncio.Future[int] | None = None
    # Loading the reranker at startup (preload_reranker), awaited at shutdown.
    preloading: asyncio.Future[None] | None = None

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
