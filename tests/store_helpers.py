"""Records built by hand for store tests: random unit vectors and prepared documents."""

from __future__ import annotations

import numpy as np

from localrank.store.records import Chunk, PreparedDocument


def unit(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_doc(
    doc_id: str, vectors: np.ndarray, meta: dict | None = None, text: str | None = None
) -> PreparedDocument:
    """A document with one chunk per vector; its content hash depends on `text`."""
    chunks = [
        Chunk(i, f"{doc_id} chunk {i}", i * 10, i * 10 + 9, i + 1, i + 1)
        for i in range(len(vectors))
    ]
    return PreparedDocument(
        doc_id, text or doc_id, meta or {}, f"/src/{doc_id}", f"h-{doc_id}-{text}", chunks, vectors
    )
