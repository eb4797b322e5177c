"""A deterministic stand-in for the engine, for plumbing tests only (never for vector quality).

Hashed bag of words: texts that share words get nearby vectors, so retrieval plumbing can be
tested end to end without a model. Implements localrank.ingest.AsyncEmbedder.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence

import numpy as np

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


def make(settings: object | None = None) -> HashEmbedder:
    """Factory with the signature the CLI hook and the benches expect."""
    return HashEmbedder()
