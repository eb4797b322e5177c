"""Qwen3Model's forward in MLX, as nn.Modules named like HF's (checkpoint keys load directly).

Written here rather than taken from mlx-embeddings, which NaNs left-padded Qwen3 rows (additive
-inf mask) and ignores a rope_theta written only under `rope_parameters`.

Matmuls (quantised or not) run in the compute dtype; the residual stream, every RMSNorm and RoPE
stay float32, as in the torch backend, so half precision costs as little accuracy as it can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from localrank.engine.mlx.layers import Mask, MLXModel
from localrank.engine.model_files import qwen3_rope_theta
from localrank.errors import ModelError


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any], rope_theta: float) -> None:
        super().__init__()
        hidden, bias = cfg["hidden_size"], bool(cfg.get("attention_bias", False))
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or hidden // self.n_heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=bias)
        # Qwen3: RMSNorm over head_dim, per head, before RoPE.
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg["rms_norm_eps"])
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg["rms_norm_eps"])

    def __call__(self, x: mx.array, mask: Mask, cd: mx.Dtype) -> mx.array:
        """`x` in the compute dtype `cd`; q and k are normed and rotated in float32."""
        b, t, _ = x.shape
        q = norm32(self.q_norm, self.q_proj(x).reshape(b, t, self.n_heads, -1))
        k = norm32(self.k_norm, self.k_proj(x).reshape(b, t, self.n_kv, -1))
        v = self.v_proj(x).reshape(b, t, self.n_kv, -1).transpose(0, 2, 1, 3)
        # Positions 0..T-1 whatever the padding, as transformers' Qwen3Model does without
        # position_ids. traditional=False is the rotate-half layout HF uses.
        q, k = (
            mx.fast.rope(
                a.transpose(0, 2, 1, 3),
                self.head_dim,
                traditional=False,
                base=self.rope_theta,
                scale=1.0,
                offset=0,
            ).astype(cd)
            for a in (q, k)
        )
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, t, -1))


class Qwen3MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = self.gate_proj(x).astype(mx.float32), self.up_proj(x).astype(mx.float32)
        return self.down_proj((nn.silu(gate) * up).astype(x.dtype))


class Qwen3Layer(nn.Module):
    def __init__(self, cfg: dict[str, Any], rope_theta: float) -> None:
        super().__init__()
        self.self_attn = Qwen3Attention(cfg, rope_theta)
        self.mlp = Qwen3MLP(cfg["hidden_size"], cfg["intermediate_size"])
        self.input_layernorm = nn.RMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])
        self.post_attention_layernorm = nn.RMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])

    def __call__(self, h: mx.array, mask: Mask, cd: mx.Dtype) -> mx.array:
        """`h`: the float32 residual stream."""
        a = self.self_attn(norm32(self.input_layernorm, h).astype(cd), mask, cd)
        h = h + a.astype(mx.float32)
        return h + self.mlp(norm32(self.post_attention_layernorm, h).astype(cd)).astype(mx.float32)


class Qwen3(MLXModel):
    causal = True
    max_positions = None  # RoPE has no table to run off

    def __init__(self, cfg: dict[str, Any], source: Path) -> None:
        super().__init__()
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelError(f"{source}: Qwen3 hidden_act={cfg['hidden_act']!r} is not supported")
        if cfg.get("use_sliding_window"):
            raise ModelError(f"{source}: Qwen3 with use_sliding_window=true is not supported")
        theta = qwen3_rope_theta(cfg, source)
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = [Qwen3Layer(cfg, theta) for _ in range(cfg["num_hidden_layers"])]
        self.norm = nn.RMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])

    def __call__(self, ids: mx.array, mask: Mask) -> mx.array:
        h = self.embed_tokens(ids).astype(mx.float32)
        for layer in self.layers:
            h = layer(h, mask, self.compute_dtype)
        return norm32(self.norm, h)


def norm32(norm: nn.RMSNorm, x: mx.array) -> mx.array:
    """RMSNorm in float32 (statistics and scale), whatever dtype `x` and the weight are in."""
    return mx.fast.rms_norm(x.astype(mx.float32), norm.weight.astype(mx.float32), norm.eps)
