"""BertModel's forward in MLX (no pooler), as nn.Modules named like HF's: post-LayerNorm,
absolute positions, single-segment inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from localrank.engine.mlx.layers import Mask, MLXModel
from localrank.errors import ModelError

ACTIVATIONS = {
    "gelu": nn.gelu,
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
}


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def __call__(self, x: mx.array, mask: Mask) -> mx.array:
        b, t, _ = x.shape
        q, k, v = (
            p(x).reshape(b, t, self.heads, -1).transpose(0, 2, 1, 3)
            for p in (self.query, self.key, self.value)
        )
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        return o.transpose(0, 2, 1, 3).reshape(b, t, -1)


class BertDenseNorm(nn.Module):
    """HF's BertSelfOutput / BertOutput: dense, residual, post-LayerNorm."""

    def __init__(self, d_in: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)  # HF's key name
        self.output = BertDenseNorm(hidden, hidden, eps)

    def __call__(self, x: mx.array, mask: Mask) -> mx.array:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: str, source: Path) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ModelError(f"{source}: BERT hidden_act={act!r} is not supported")
        self.act = ACTIVATIONS[act]
        self.dense = nn.Linear(hidden, intermediate)

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any], source: Path) -> None:
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        self.attention = BertAttention(hidden, cfg["num_attention_heads"], eps)
        self.intermediate = BertIntermediate(
            hidden, cfg["intermediate_size"], cfg.get("hidden_act", "gelu"), source
        )
        self.output = BertDenseNorm(cfg["intermediate_size"], hidden, eps)

    def __call__(self, x: mx.array, mask: Mask) -> mx.array:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=cfg.get("layer_norm_eps", 1e-12))
        # XLM-RoBERTa numbers positions from padding_idx + 1; BERT from 0.
        roberta = cfg.get("model_type") == "xlm-roberta"
        self.position_offset = int(cfg.get("pad_token_id", 1)) + 1 if roberta else 0

    def __call__(self, ids: mx.array, types: mx.array | None = None) -> mx.array:
        positions = self.position_offset + mx.arange(ids.shape[1])[None]
        # Segment ids of a cross-encoder's pairs; single-segment inputs otherwise.
        token_types = mx.zeros_like(ids) if types is None else types
        h = (
            self.word_embeddings(ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_types)
        )
        return self.LayerNorm(h)


class BertEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], source: Path) -> None:
        super().__init__()
        self.layer = [BertLayer(cfg, source) for _ in range(cfg["num_hidden_layers"])]


class Bert(MLXModel):
    causal = False

    def __init__(self, cfg: dict[str, Any], source: Path) -> None:
        super().__init__()
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(
                f"{source}: BERT position_embedding_type="
                f"{cfg['position_embedding_type']!r} is not supported"
            )
        self.embeddings = BertEmbeddings(cfg)
        self.max_positions = int(cfg["max_position_embeddings"]) - self.embeddings.position_offset
        self.encoder = BertEncoder(cfg, source)

    def __call__(self, ids: mx.array, mask: Mask, types: mx.array | None = None) -> mx.array:
        h = self.embeddings(ids, types)
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return h
