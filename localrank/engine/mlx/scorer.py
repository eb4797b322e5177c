"""MLXScorer: a cross-encoder on MLX, scored as its authors score it (see engine/rerank.py).

Qwen3-Reranker: the Qwen3 forward, then the "no" and "yes" rows of the output projection only,
at the last position (rows are left-padded). BERT / XLM-RoBERTa: the encoder with segment ids
(and XLM-R's position offset), then BERT's pooler + classifier or RoBERTa's classification
head, both tanh(dense(first token)) then a one-label projection.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlx.core as mx
import numpy as np

from localrank.engine.batching import checked_batch
from localrank.engine.mlx.bert import Bert
from localrank.engine.mlx.embedder import (
    DTYPES,
    check_and_load,
    dtype_name,
    pick_device,
    read_weights,
)
from localrank.engine.mlx.layers import attention_mask
from localrank.engine.mlx.qwen3 import Qwen3
from localrank.engine.model_files import normalise_keys, read_config
from localrank.engine.rerank import HEADS, PREFIXES, RerankRecipe
from localrank.engine.types import BackendInfo, Batch, Pause
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)


class MLXScorer:
    def __init__(
        self, model_dir: Path, recipe: RerankRecipe, *, dtype: str = "auto", device: str = "auto"
    ) -> None:
        model_dir = Path(model_dir)
        self._device, name = pick_device(device)
        if dtype == "auto":
            compute = mx.float16 if name == "gpu" else mx.float32
        elif dtype in DTYPES:
            compute = DTYPES[dtype]
        else:
            raise BackendError(f"unknown dtype {dtype!r}; expected auto or {', '.join(DTYPES)}")
        self.recipe = recipe
        cfg, config_path = read_config(model_dir)
        family = recipe.family
        with mx.stream(self._device):
            weights, origin = read_weights(model_dir)
            head: list[mx.array] = []
            lm_head = weights.pop("lm_head.weight", None)
            if family != "qwen3-reranker":
                for key in HEADS[family]:
                    if key not in weights:
                        raise ModelError(f"{model_dir}: missing weight {key!r} of the head")
                    head.append(weights.pop(key).astype(compute))
            weights, origin = normalise_keys(weights, origin, PREFIXES[family])
            try:
                model = (
                    Qwen3(cfg, config_path)
                    if family == "qwen3-reranker"
                    else Bert(cfg, config_path)
                )
            except KeyError as e:
                raise ModelError(f"{config_path}: missing config key {e}") from e
            if family == "qwen3-reranker":
                if lm_head is None:
                    if not cfg.get("tie_word_embeddings", False):
                        raise ModelError(f"{model_dir}: no lm_head.weight, embeddings not tied")
                    lm_head = weights["embed_tokens.weight"]
                assert recipe.yes_id is not None and recipe.no_id is not None
                self.rows = lm_head[mx.array([recipe.no_id, recipe.yes_id])].astype(compute)
                mx.eval(self.rows)
            f32 = ("norm.weight",) if family == "qwen3-reranker" else ()
            check_and_load(model, weights, origin, model_dir, compute, f32)
            mx.eval(*head)
        model.compute_dtype = compute
        model.eval()
        self._model: Qwen3 | Bert | None = model
        self.head = head
        self._vocab = int(cfg["vocab_size"])
        self.info = BackendInfo(
            backend="mlx",
            device=name,
            dtype=dtype_name(compute),
            dim=1,
            pooling="last_token" if family == "qwen3-reranker" else "cls",
            max_tokens=recipe.max_tokens,
            dtype_reason="set by the dtype setting" if dtype != "auto" else f"MLX on {name}",
        )
        log.info("mlx: loaded reranker %s (%s) on %s", model_dir, family, name)

    def score(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        """Raw logits [B]. MLX evaluates the graph at once: `pause` has nowhere to run."""
        model = self._model
        if model is None:
            raise BackendError("MLX reranker is closed")
        ids_np, mask_np = checked_batch(batch, self._vocab, model.max_positions)
        if ids_np.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        real = mask_np != 0
        with mx.stream(self._device):
            ids = mx.array(ids_np.astype(np.int32))
            mask = attention_mask(real, causal=model.causal)
            if isinstance(model, Qwen3):
                if not real[:, -1].all():
                    raise BackendError("Qwen3-Reranker rows must be left-padded")
                last = model(ids, mask)[:, -1]
                no_yes = (last.astype(self.rows.dtype) @ self.rows.T).astype(mx.float32)
                logits = no_yes[:, 1] - no_yes[:, 0]
            else:
                types = None
                if batch.token_type_ids is not None:
                    types = mx.array(np.asarray(batch.token_type_ids).astype(np.int32))
                first = model(ids, mask, types)[:, 0]
                w1, b1, w2, b2 = self.head
                x = mx.tanh(first @ w1.T + b1)
                logits = (x @ w2.T + b2)[:, 0].astype(mx.float32)
            mx.eval(logits)
            out = np.array(logits, dtype=np.float32)
        mx.clear_cache()
        return out

    def close(self) -> None:
        self._model = None
        self.head = []
        self.rows = mx.zeros((0,))
        mx.clear_cache()
