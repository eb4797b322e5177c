"""The small protocol every backend implements, and the values passed across it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Recipe:
    """Model-family rules: how to turn token ids into the vectors the model authors intended."""

    family: str  # "qwen3" (decoder, last-token) or "bert" (encoder, mean/cls)
    pooling: str  # "last_token" | "mean" | "cls"
    padding_side: str  # "left" | "right"
    normalize: bool
    dim: int
    max_tokens: int
    pad_token_id: int
    eos_token_id: int | None = None
    # Template for instructed queries, e.g. "Instruct: {task}\nQuery:{query}";
    # None: the model takes no instructions.
    query_template: str | None = None
    default_instruction: str | None = None

    @property
    def prompt_format(self) -> str:
        return self.query_template or "none"


@dataclass(frozen=True)
class Batch:
    """A padded batch. Rows follow `recipe.padding_side`; mask is 1 on real tokens."""

    input_ids: np.ndarray  # int64 [B, T]
    attention_mask: np.ndarray  # int64 [B, T]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.input_ids.shape[0]), int(self.input_ids.shape[1]))


@dataclass(frozen=True)
class BackendInfo:
    """What a backend really loaded, read back from the loaded model, not predicted."""

    backend: str  # "torch" | "mlx"
    device: str  # "cpu" | "cuda" | "mps" | "gpu" (MLX Metal)
    dtype: str  # "float32" | "float16" | "bfloat16"
    dim: int
    pooling: str
    max_tokens: int


class Embedder(Protocol):
    """A loaded model on one device. One thread calls it at a time."""

    info: BackendInfo

    def embed(self, batch: Batch) -> np.ndarray:
        """Pooled, not normalised, float32 [B, dim] vectors for a padded batch."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...
