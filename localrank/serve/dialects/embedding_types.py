"""Cohere's embedding types, each made from the float vectors the model gives.

- float: the vectors (unit length, after `output_dimension`).
- int8 / uint8: each vector scaled so its largest component is 127 and rounded (int8, in
  [-127, 127]); uint8 is int8 + 128 (so [1, 255]), the relation Cohere's and
  sentence-transformers' types keep. Cohere's own models are trained to give int8 values, with no
  published formula; this scaling keeps each vector's direction, so cosine on the integers is
  the float cosine to about 1e-3, and needs no calibration set.
- ubinary: one bit a dimension, 1 where the component is positive, packed eight to a byte with
  the first dimension in the most significant bit (numpy's `packbits`); binary is the same byte
  minus 128 as a signed int8 (what Cohere's SDK documents as packed signed binary).
- base64: the float32 vector's bytes, little-endian, base64-encoded.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

INT8_MAX = 127
UNSIGNED_OFFSET = 128


def int8(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to a largest magnitude of 127 and rounded: int8 [N, dims]."""
    v = vectors.astype(np.float64)
    peak = np.abs(v).max(axis=1, keepdims=True)
    scale = np.divide(INT8_MAX, peak, out=np.zeros_like(peak), where=peak > 0)
    return np.rint(v * scale).clip(-INT8_MAX, INT8_MAX).astype(np.int8)


def uint8(vectors: np.ndarray) -> np.ndarray:
    return (int8(vectors).astype(np.int16) + UNSIGNED_OFFSET).astype(np.uint8)


def ubinary(vectors: np.ndarray) -> np.ndarray:
    """Sign bits, the first dimension in each byte's most significant bit: uint8 [N, dims/8]."""
    return np.packbits(vectors > 0, axis=1)


def binary(vectors: np.ndarray) -> np.ndarray:
    return (ubinary(vectors).astype(np.int16) - UNSIGNED_OFFSET).astype(np.int8)


def base64_float32(vectors: np.ndarray) -> list[str]:
    return [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]


ENCODERS: dict[str, Callable[[np.ndarray], Any]] = {
    "float": lambda v: v.tolist(),
    "int8": lambda v: int8(v).tolist(),
    "uint8": lambda v: uint8(v).tolist(),
    "binary": lambda v: binary(v).tolist(),
    "ubinary": lambda v: ubinary(v).tolist(),
    "base64": base64_float32,
}
EMBEDDING_TYPES = tuple(ENCODERS)


def by_type(vectors: np.ndarray, types: Sequence[str]) -> dict[str, Any]:
    """Cohere's `embeddings` object: one list of vectors for each type asked for, in order."""
    return {t: ENCODERS[t](vectors) for t in dict.fromkeys(types)}
