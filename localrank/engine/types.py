"""The small protocol every backend implements, and the values passed across it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# Texts, or token-id lists (OpenAI's token-array input).
Inputs = Sequence[str] | Sequence[Sequence[int]]
# The smallest Matryoshka size a request may ask for (or the model's dim, if smaller).
MIN_DIMENSIONS = 32
POOLINGS = ("last_token", "mean", "cls")


@dataclass(frozen=True)
class Recipe:
    """Model-family rules: how to turn token ids into the vectors the model authors intended."""

    family: str  # "qwen3" (decoder, last-token) or "bert" (encoder, mean/cls)
    pooling: str  # one of POOLINGS
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
    # Segment ids of a (query, document) pair for encoder cross-encoders; None: all segment 0.
    token_type_ids: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.input_ids.shape[0]), int(self.input_ids.shape[1]))


@dataclass(frozen=True)
class BackendInfo:
    """What a backend really loaded, read back from the loaded model, not predicted."""

    backend: str  # "torch" | "mlx"
    device: str  # "cpu" | "cuda" | "mps" | "gpu" (MLX Metal)
    dtype: str  # "float32" | "float16" | "bfloat16" | "int8" (int8 matmul weights, float32 rest)
    dim: int
    pooling: str
    max_tokens: int
    dtype_reason: str = ""  # why this dtype: the setting, the accelerator's rule, the CPU probe
    threads: int = 0  # compute threads (torch's intra-op pool on CPU); 0: not applicable


Pause = Callable[[], None]


class BackgroundStopped(Exception):
    """Background work of a backend (Engine.optimize) stopped because the engine is closing."""


class Embedder(Protocol):
    """A loaded model on one device. One thread calls it at a time."""

    info: BackendInfo

    def embed(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        """Pooled, not normalised, float32 [B, dim] vectors for a padded batch.

        `pause`, where the backend can, is called between two layers of the forward pass, on the
        calling thread: the scheduler runs a short pass for waiting requests there. It may call
        `embed` again (without a pause); a backend that runs the graph at once ignores it."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


class Scorer(Protocol):
    """A loaded cross-encoder on one device: padded (query, document) pairs -> relevance
    logits. One thread calls it at a time."""

    info: BackendInfo

    def score(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        """float32 [B] raw logits, one per pair; sigmoid(logit) is the [0, 1] relevance.
        (Qwen3-Reranker: logit("yes") - logit("no") at the last position, whose sigmoid is the
        authors' softmax probability of "yes".) `pause` as in `Embedder.embed`."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


@dataclass(frozen=True)
class ModelInfo:
    """What is being served, as read back from the loaded model."""

    model_id: str
    path: Path
    revision: str
    recipe: Recipe
    backend: BackendInfo
    tokenizer_appends_eos: bool
    fallback_reason: str | None = None
    # Every name the model answers to, as lists show them (engine/names.py `model_names`).
    names: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Identifies vectors that can be compared (`vector_fingerprint`)."""
        return vector_fingerprint(
            self.model_id, self.revision, self.recipe, int8=self.backend.dtype == "int8"
        )

    @property
    def display_name(self) -> str:
        """The `model` field of every response: loud when the offline fallback is serving."""
        if self.fallback_reason is None:
            return self.model_id
        return f"{self.model_id} (offline fallback: the configured model is not available)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.display_name,
            "model_id": self.model_id,
            "names": list(self.names),
            "path": str(self.path),
            "revision": self.revision,
            "fingerprint": self.fingerprint,
            "fallback": self.fallback_reason is not None,
            "fallback_reason": self.fallback_reason,
            **asdict(self.backend),
            "normalized": self.recipe.normalize,
            "padding_side": self.recipe.padding_side,
            "instructions": self.recipe.query_template is not None,
            "query_template": self.recipe.query_template,
            "default_instruction": self.recipe.default_instruction,
            "tokenizer_appends_eos": self.tokenizer_appends_eos,
            "min_dimensions": min(MIN_DIMENSIONS, self.recipe.dim),
        }


# What an int8 model's fingerprint adds to the float one.
INT8_MARK = ":int8"


def vector_fingerprint(model_id: str, revision: str, recipe: Recipe, *, int8: bool) -> str:
    """Identifies vectors that can be compared: same model, revision, size, pooling, prompts,
    and int8 or not. (Float precisions share one: bfloat16 vectors stay within cosine 0.999 of
    float32's, and collections filled before int8 existed keep their fingerprint.)"""
    prompt = hashlib.sha256(recipe.prompt_format.encode()).hexdigest()[:8]
    precision = INT8_MARK if int8 else ""
    return f"{model_id}@{revision}:{recipe.dim}:{recipe.pooling}:{prompt}{precision}"
