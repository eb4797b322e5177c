"""The one implementation behind every dialect: cached, scheduled embedding and rerank.

Routes reach the model only through `ModelService` (vectors, scores, token ids and counts,
cutting to a token limit); the collections layer reaches it through `DaemonEmbeddingModel`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from localrank.engine.core import Engine, apply_dimensions, check_inputs, relevance
from localrank.engine.rerank import CrossEncoder, check_pairs, sigmoid
from localrank.engine.tokenizer import Token
from localrank.engine.types import ModelInfo
from localrank.errors import InvalidInput, TooLarge
from localrank.ops import allocator
from localrank.serve.metrics import Registry
from localrank.serve.reranking import CrossEncoderSlot
from localrank.serve.worker import BatchStats, ModelWorker

BI_ENCODER_METHOD = "bi-encoder cosine of the instructed query and each document, mapped to [0,1]"


@dataclass(frozen=True)
class RerankOutput:
    """Scores of documents against a query, in document order."""

    scores: np.ndarray  # float32 [N] in [0, 1]
    raw: np.ndarray  # the cross-encoder's logit, or the bi-encoder's cosine
    tokens: int
    method: str  # "cross-encoder" | "bi-encoder"
    model: str  # the model that scored


@dataclass(frozen=True)
class EmbedOutput:
    vectors: np.ndarray  # float32 [N, dims]
    prompt_tokens: int
    truncated: int
    cached: int


@dataclass(frozen=True)
class _Entry:
    vector: np.ndarray
    tokens: int
    truncated: bool


CacheKey = tuple[str, bytes]  # model fingerprint, digest of the model input text
# Above this many characters in one request, the cache keys are hashed in a thread.
HASH_IN_THREAD_CHARS = 1 << 20


def cache_key(fingerprint: str, text: str) -> CacheKey:
    """The text's digest, not the text: an entry costs the same for a 30 MB input as for a
    word (128-bit BLAKE2b; a collision is not a practical concern)."""
    return fingerprint, hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """An in-memory LRU of full-size vectors, keyed by model fingerprint and a digest of the
    model input text, so its memory is bounded by its capacity: capacity x (vector + ~200 B)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0  # vector bytes held

    def get(self, key: CacheKey) -> _Entry | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                self._data.move_to_end(key)
            return entry

    def put(self, key: CacheKey, entry: _Entry) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.nbytes -= old.vector.nbytes
            self._data[key] = entry
            self.nbytes += entry.vector.nbytes
            while len(self._data) > self.capacity:
                _, evicted = self._data.popitem(last=False)
                self.nbytes -= evicted.vector.nbytes

    def __len__(self) -> int:
        return len(self._data)


class ModelService:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        batch_wait_ms: float,
        queue_size: int,
        cache_size: int,
        max_inputs: int = 2048,
        preempt_ms: float = 0.0,
        reranker: CrossEncoderSlot | None = None,
    ) -> None:
        self.engine = engine
        self.reranker = reranker
        self.max_inputs = max_inputs
        self.registry = registry
        self.cache = EmbeddingCache(cache_size)
        self.worker = ModelWorker(
            engine,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            preempt_ms=preempt_ms,
            queue_size=queue_size,
            on_batch=self._record_batch,
            # After a burst, hand the memory it freed back to the system.
            on_idle=allocator.trim,
        )
        registry.gauge(
            "localrank_queue_depth",
            "Requests waiting for or in the model",
            lambda: float(self.worker.depth),
        )
        registry.gauge(
            "localrank_cache_entries",
            "Vectors in the embedding cache",
            lambda: float(len(self.cache)),
        )
        registry.gauge(
            "localrank_cache_bytes",
            "Bytes of the vectors in the embedding cache",
            lambda: float(self.cache.nbytes),
        )

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    @property
    def max_batch_tokens(self) -> int:
        return self.engine.max_batch_tokens

    @property
    def queue_depth(self) -> int:
        """Requests waiting for or inside the model."""
        return self.worker.depth

    def format_query(self, text: str, instruction: str | None) -> str:
        """The model input for a query: the recipe's instruction template, if it has one."""
        return self.engine.format_query(text, instruction)

    def _record_batch(self, stats: BatchStats) -> None:
        r = self.registry
        r.observe("localrank_batch_size", stats.rows)
        r.observe("localrank_batch_tokens", stats.tokens)
        r.observe("localrank_batch_seconds", stats.seconds)

    async def embed(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        query: bool = False,
        instruction: str | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
        bulk: bool = False,
    ) -> EmbedOutput:
        """Embed texts (or token ids): cache first, the model for the rest."""
        is_ids = check_inputs(inputs, max_inputs=self.max_inputs)
        dim = self.engine.dim
        out = np.empty((len(inputs), dim), dtype=np.float32)
        tokens = [0] * len(inputs)
        truncated = [False] * len(inputs)
        fingerprint = self.info.fingerprint
        missing: list[int] = []
        keys: list[CacheKey] = []
        model_inputs: list[Any]
        if is_ids:
            model_inputs = list(inputs)
            missing = list(range(len(inputs)))
        else:
            texts = cast(Sequence[str], inputs)
            model_inputs = [self.engine.format_query(t, instruction) if query else t for t in texts]
            keys = await self._keys(fingerprint, model_inputs)
            for i, key in enumerate(keys):
                entry = self.cache.get(key)
                if entry is None or (entry.truncated and not truncate):
                    missing.append(i)
                    continue
                out[i], tokens[i], truncated[i] = entry.vector, entry.tokens, entry.truncated
        hits = len(inputs) - len(missing)
        if hits:
            self.registry.inc("localrank_cache_hits_total", hits)
        if missing:
            if not is_ids:
                self.registry.inc("localrank_cache_misses_total", len(missing))
            result = await self.worker.submit(
                [model_inputs[i] for i in missing], truncate=truncate, bulk=bulk
            )
            for j, i in enumerate(missing):
                out[i] = result.vectors[j]
                tokens[i] = result.tokens[j]
                truncated[i] = result.truncated[j]
                if not is_ids:
                    self.cache.put(
                        keys[i],
                        _Entry(result.vectors[j].copy(), result.tokens[j], result.truncated[j]),
                    )
            self.registry.inc("localrank_embedded_inputs_total", len(missing))
            self.registry.inc("localrank_tokens_total", sum(result.tokens))
        n_truncated = sum(truncated)
        if n_truncated:
            self.registry.inc("localrank_truncated_inputs_total", n_truncated)
        return EmbedOutput(apply_dimensions(out, dimensions), sum(tokens), n_truncated, hits)

    async def _keys(self, fingerprint: str, texts: Sequence[str]) -> list[CacheKey]:
        if self.cache.capacity <= 0:
            return [(fingerprint, b"")] * len(texts)  # nothing is stored or found
        if sum(len(t) for t in texts) < HASH_IN_THREAD_CHARS:
            return [cache_key(fingerprint, t) for t in texts]
        return await asyncio.to_thread(lambda: [cache_key(fingerprint, t) for t in texts])

    async def bi_encoder_scores(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        truncate: bool = True,
    ) -> tuple[np.ndarray, int]:
        """Bi-encoder scores in [0, 1]: the instructed query's cosine to each document."""
        check_inputs(documents, max_inputs=self.max_inputs, param="documents")
        if not isinstance(query, str):
            raise InvalidInput("query must be a string", param="query")
        q, d = await asyncio.gather(
            self.embed([query], query=True, instruction=instruction, truncate=truncate),
            self.embed(documents, truncate=truncate),
        )
        cosine = d.vectors @ q.vectors[0]
        return relevance(cosine), q.prompt_tokens + d.prompt_tokens

    @property
    def cross_encoder(self) -> bool:
        """Whether a cross-encoder reranker is configured (rerank routes then use it)."""
        return self.reranker is not None and self.reranker.configured is not None

    def is_reranker_name(self, name: Any) -> bool:
        """Whether a request's `model` names the configured reranker (its setting as given, or
        a folder's name)."""
        configured = self.reranker.configured if self.reranker is not None else None
        if not configured or not isinstance(name, str):
            return False
        return name in (configured, configured.rstrip("/").rsplit("/", 1)[-1])

    def rerank_status(self) -> dict[str, Any]:
        if self.reranker is None:
            return {"configured": None, "loaded": False, "rerank_method": BI_ENCODER_METHOD}
        return self.reranker.status(BI_ENCODER_METHOD)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        truncate: bool = True,
        method: str | None = None,
        bulk: bool = False,
    ) -> RerankOutput:
        """Documents scored against a query: by the cross-encoder when one is configured (or
        `method="cross-encoder"` asks for it: 422 without one), else by the bi-encoder."""
        check_pairs(query, documents, max_inputs=self.max_inputs)
        if method not in (None, "cross-encoder", "bi-encoder"):
            raise InvalidInput("method must be cross-encoder or bi-encoder", param="method")
        if method == "bi-encoder" or (method is None and not self.cross_encoder):
            scores, tokens = await self.bi_encoder_scores(
                query, documents, instruction=instruction, truncate=truncate
            )
            return RerankOutput(
                scores, scores * 2.0 - 1.0, tokens, "bi-encoder", self.info.display_name
            )
        slot = self.reranker
        if slot is None:
            raise InvalidInput("no reranker is configured", param="method")
        async with slot.hold() as reranker:
            return await self._cross_encode(reranker, query, documents, instruction, truncate, bulk)

    async def _cross_encode(
        self,
        reranker: CrossEncoder,
        query: str,
        documents: Sequence[str],
        instruction: str | None,
        truncate: bool,
        bulk: bool,
    ) -> RerankOutput:
        def prepare(part: Sequence[str]) -> list:  # type: ignore[type-arg]
            return reranker.prepare(query, part, instruction=instruction)

        result = await self.worker.submit(
            list(documents), bulk=bulk, runner=reranker, prepare=prepare
        )
        if not truncate and any(result.truncated):
            i = result.truncated.index(True)
            limit = reranker.recipe.max_tokens
            raise TooLarge(
                f"documents[{i}] with the query is over the reranker's {limit} tokens and "
                "truncation is off",
                param="documents",
            )
        raw = result.vectors[:, 0].copy()
        tokens = sum(result.tokens)
        self.registry.inc("localrank_reranked_pairs_total", len(documents))
        return RerankOutput(sigmoid(raw), raw, tokens, "cross-encoder", reranker.info.model_id)

    async def tokens(
        self,
        texts: Sequence[str],
        *,
        add_special_tokens: bool = True,
        query: bool = False,
        instruction: str | None = None,
    ) -> list[list[Token]]:
        """Each text's tokens with their character spans (queries formatted as the model sees
        them), tokenised off the event loop."""
        check_inputs(texts, max_inputs=self.max_inputs, param="inputs")
        formatted = [self.format_query(t, instruction) if query else t for t in texts]
        tok = self.engine.tokenizer
        return await asyncio.to_thread(
            lambda: [tok.describe(t, add_special_tokens=add_special_tokens) for t in formatted]
        )

    async def cut_to_tokens(self, texts: Sequence[str], limit: int) -> list[str]:
        """Each text cut after its first `limit` content tokens."""
        tok = self.engine.tokenizer
        return await asyncio.to_thread(tok.cut, texts, limit)

    def token_offsets(self, text: str) -> np.ndarray:
        """Character span of each content token of `text`: int64 [n, 2]."""
        return self.engine.tokenizer.offsets(text)

    def close(self) -> None:
        self.worker.stop()


class DaemonCrossEncoder:
    """The service's cross-encoder seen through the collections layer's CrossEncoderModel."""

    def __init__(self, models: ModelService) -> None:
        self.models = models

    @property
    def available(self) -> bool:
        return self.models.cross_encoder

    async def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        out = await self.models.rerank(query, documents, method="cross-encoder")
        return out.scores


class DaemonEmbeddingModel:
    """The service seen through the collections layer's EmbeddingModel protocol."""

    def __init__(self, models: ModelService) -> None:
        self.models = models
        self.model_id = models.info.model_id
        self.fingerprint = models.info.fingerprint
        self.dim = models.info.recipe.dim
        self.max_tokens = models.info.recipe.max_tokens

    async def embed(
        self,
        texts: Sequence[str],
        *,
        query: bool,
        instruction: str | None = None,
        bulk: bool = False,
    ) -> np.ndarray:
        out = await self.models.embed(list(texts), query=query, instruction=instruction, bulk=bulk)
        return out.vectors

    def token_offsets(self, text: str) -> np.ndarray:
        return self.models.token_offsets(text)

    def close(self) -> None:
        """The daemon owns the model; closing this view of it releases nothing."""
