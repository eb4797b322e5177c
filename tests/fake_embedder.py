"""Deterministic stand-ins for the model, for plumbing tests only (never for vector quality).

Hashed bag of words: texts that share words get nearby vectors, so retrieval plumbing can be
tested end to end without a model. `HashEmbedder` implements localrank.collections'
EmbeddingModel; `hash_engine` puts the same idea behind the engine's backend protocol, so the
real daemon can be built around it (`make_app(settings, loader=hash_loader(...))`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from localrank.config import Settings
from localrank.engine.core import Engine
from localrank.engine.recipe import load_recipe
from localrank.engine.resolve import ResolvedModel
from localrank.engine.tokenizer import TextTokenizer, load_raw_tokenizer
from localrank.engine.types import BackendInfo, Batch, Pause, Recipe

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")


def _bucket(word: str, dim: int) -> tuple[int, float]:
    h = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(h, "little")
    return value % dim, 1.0 if (value >> 32) & 1 else -1.0


class HashEmbedder:
    """Deterministic hashed bag-of-words vectors; counts its calls for cache tests."""

    def __init__(
        self,
        dim: int = 64,
        model_id: str = "fake/hash-bow",
        delay: float = 0.0,
        max_tokens: int = 512,
    ) -> None:
        self.dim = dim
        self.model_id = model_id
        self.max_tokens = max_tokens  # like a model's limit: longer inputs would be cut
        self.fingerprint = f"{model_id}@1:dim={dim}:pool=bow:prompt=none"
        self.delay = delay
        self.calls = 0
        self.texts_embedded = 0
        self.bulk_calls = 0
        self.longest_input = 0  # tokens in the longest text embedded
        self.closed = False

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in _WORD.findall(text.lower()):
            i, sign = _bucket(word, self.dim)
            v[i] += sign
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            v[0] = 1.0
            return v
        return v / norm

    async def embed(
        self,
        texts: Sequence[str],
        *,
        query: bool,
        instruction: str | None = None,
        bulk: bool = False,
    ) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        if bulk:
            self.bulk_calls += 1
        self.longest_input = max([self.longest_input, *(len(self.token_offsets(t)) for t in texts)])
        if self.delay:
            await asyncio.sleep(self.delay)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in _TOKEN.finditer(text)]

    def close(self) -> None:
        self.closed = True


def make(settings: object | None = None) -> HashEmbedder:
    """Factory with the signature the CLI hook and the benches expect."""
    return HashEmbedder()


class HashBackend:
    """The engine's backend protocol (Embedder) with hashed bag-of-token vectors, so the real
    daemon (scheduler, cache, dialects, collections adapter) runs around a fake forward pass.
    For plumbing tests only."""

    def __init__(
        self,
        recipe: Recipe,
        skip: set[int],
        dim: int,
        seconds_per_token: float = 0.0,
        layers: int = 4,
    ) -> None:
        self.recipe = recipe
        self.skip = skip  # the special tokens every input carries: not content
        # A forward pass that takes time like a model's: `layers` sleeps (the GIL is free), with
        # the scheduler's pause between two of them, as the torch backend does.
        self.seconds_per_token = seconds_per_token
        self.layers = layers
        self.rows = 0  # rows embedded so far
        self.pauses = 0
        self.info = BackendInfo(
            backend="fake",
            device="cpu",
            dtype="float32",
            dim=dim,
            pooling=recipe.pooling,
            max_tokens=recipe.max_tokens,
        )

    def embed(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        dim = self.info.dim
        self.rows += batch.shape[0]
        if self.seconds_per_token:
            tokens = int(np.asarray(batch.attention_mask).sum())
            for layer in range(self.layers):
                if layer and pause is not None:
                    self.pauses += 1
                    pause()
                time.sleep(self.seconds_per_token * tokens / self.layers)
        out = np.zeros((batch.shape[0], dim), dtype=np.float32)
        for row, (ids, mask) in enumerate(zip(batch.input_ids, batch.attention_mask, strict=True)):
            for token in ids[mask != 0].tolist():
                if token not in self.skip:
                    i, sign = _bucket(str(token), dim)
                    out[row, i] += sign
            if not out[row].any():
                out[row, 0] = 1.0
        return out

    def close(self) -> None:
        pass


def hash_engine(
    model_dir: Path,
    *,
    dim: int = 64,
    model_id: str = "fake/hash-bow",
    served_names: Sequence[str] = (),
    seconds_per_token: float = 0.0,
    max_tokens: int = 8192,
) -> Engine:
    """A real Engine (tokenizer, recipe, batching) over `model_dir`'s tokenizer, with HashBackend
    in place of the model."""
    raw = load_raw_tokenizer(model_dir)
    recipe = dataclasses.replace(
        load_recipe(model_dir, raw, max_tokens=max_tokens, default_instruction="x"), dim=dim
    )
    tokenizer = TextTokenizer(raw, recipe)
    backend = HashBackend(recipe, set(tokenizer.prefix + tokenizer.suffix), dim, seconds_per_token)
    return Engine(
        ResolvedModel(model_id, model_dir, "1"),
        tokenizer,
        backend,
        max_batch_tokens=2048,
        max_batch_size=64,
        served_names=served_names,
    )


def hash_loader(model_dir: Path, **kwargs: object) -> Callable[[Settings], Engine]:
    """A `make_app(loader=...)` that serves `hash_engine(model_dir)`, under the settings'
    served model names."""
    return lambda settings: hash_engine(
        model_dir,
        served_names=settings.served_model_names,
        **kwargs,  # type: ignore[arg-type]
    )
