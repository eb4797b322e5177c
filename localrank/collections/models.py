"""What the collections layer needs from a model (`EmbeddingModel`), and the in-process adapter.

The daemon adapts its scheduler-backed ModelService to this protocol (`serve.model_service`);
`LocalEmbeddingModel` adapts a loaded Engine for the CLI when it runs without a daemon. Model
calls run in one worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from localrank.config import Settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine, load_reranker
from localrank.engine.rerank import CrossEncoder

Spans = Sequence[tuple[int, int]] | np.ndarray


class EmbeddingModel(Protocol):
    """What ingestion and search need from the engine."""

    model_id: str  # e.g. "Qwen/Qwen3-Embedding-0.6B"
    fingerprint: str  # model id + revision + dim + pooling + prompt format
    dim: int
    max_tokens: int  # the most tokens one input may have, special tokens included

    async def embed(
        self,
        texts: Sequence[str],
        *,
        query: bool,
        instruction: str | None = None,
        bulk: bool = False,
    ) -> np.ndarray:
        """float32 [N, dim], L2-normalised."""
        ...

    def token_offsets(self, text: str) -> Spans:
        """Character span of each token of `text`: pairs, or an int array [n, 2]."""
        ...

    def close(self) -> None:
        """Release the model if this embedder owns one (a no-op for the daemon's adapter)."""
        ...


class CrossEncoderModel(Protocol):
    """A cross-encoder, as search's rerank stage needs it."""

    async def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """float32 [N] relevance in [0, 1], in document order."""
        ...


EmbeddingModelGetter = Callable[[], EmbeddingModel]
# The reranker in force, or None (search's rerank stage is then the embedding cosine).
CrossEncoderGetter = Callable[[], CrossEncoderModel | None]
EmbeddingModelFactory = Callable[[Settings], EmbeddingModel]


class LocalEmbeddingModel:
    """A loaded Engine behind the EmbeddingModel protocol, on its own model thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model_id = engine.info.model_id
        self.fingerprint = engine.info.fingerprint
        self.dim = engine.dim
        self.max_tokens = engine.recipe.max_tokens
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localrank-model")

    async def embed(
        self,
        texts: Sequence[str],
        *,
        query: bool,
        instruction: str | None = None,
        bulk: bool = False,
    ) -> np.ndarray:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._thread,
            lambda: self.engine.embed(list(texts), query=query, instruction=instruction),
        )
        return result.vectors

    def token_offsets(self, text: str) -> Spans:
        return self.engine.tokenizer.offsets(text)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.engine.close()


def local_embedding_model(
    settings: Settings, stored: Callable[[], Iterable[str]] | None = None
) -> EmbeddingModel:
    """Load the configured model in this process (what the CLI does without a daemon);
    `stored`: the fingerprints of the store's collections (load_engine)."""
    return LocalEmbeddingModel(load_engine(settings, stored=stored))


class LocalCrossEncoder:
    """A loaded CrossEncoder behind the CrossEncoderModel protocol, on its own thread (the CLI's
    `localrank eval` without a daemon)."""

    def __init__(self, reranker: CrossEncoder) -> None:
        self.reranker = reranker
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localrank-rerank")

    async def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._thread, lambda: self.reranker.rerank(query, list(documents))
        )
        return result.scores

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.reranker.close()


def local_cross_encoder(settings: Settings) -> LocalCrossEncoder:
    return LocalCrossEncoder(load_reranker(settings))
