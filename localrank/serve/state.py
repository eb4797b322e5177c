"""The daemon's state, shared by the app factory and the routes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

from localrank.config import Settings
from localrank.errors import LocalrankError, NotReady
from localrank.ingest import AsyncEmbedder
from localrank.serve.embedding import EmbeddingService, StoreEmbedder


@dataclass
class DaemonState:
    settings: Settings
    started: float = field(default_factory=time.monotonic)
    service: EmbeddingService | None = None
    store_embedder: StoreEmbedder | None = None
    load_error: LocalrankError | None = None
    load_seconds: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def embedding(self) -> EmbeddingService:
        """The loaded model's service, or 503 with why there is none."""
        if self.service is not None:
            return self.service
        if self.load_error is not None:
            raise NotReady(f"the model failed to load: {self.load_error.message}")
        raise NotReady("the model is still loading")

    def embedder(self) -> AsyncEmbedder:
        self.embedding()
        assert self.store_embedder is not None
        return self.store_embedder


STATE_KEY = web.AppKey("state", DaemonState)


def service(request: web.Request) -> EmbeddingService:
    return request.app[STATE_KEY].embedding()

