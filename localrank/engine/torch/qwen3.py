"""Qwen3Model's forward in torch, on plain tensors (no nn.Module).

Matches transformers' `Qwen3Model` to float32 rounding and handles the same traps as the MLX
backend: positions 0..T-1 whatever the padding, rope_theta read from `rope_parameters` as
transformers 5 writes it, the per-head q_norm / k_norm, grouped-query attention. Projections that
read the same input are fused into one matmul at build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.model_files import qwen3_rope_theta
from localrank.engine.torch.layers import (
    Packing,
    Shapes,
    attend,
    attention_mask,
    rms_norm,
    rotate_half,
)
from localrank.errors import ModelError


def _dims(cfg: dict[str, Any]) -> tuple[int, int, int, int, int]:
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return hidden, heads, kv, head_dim, int(cfg["intermediate_size"])


def qwen3_shapes(cfg: dict[str, Any]) -> Shapes:
    """Every weight a Qwen3 checkpoint needs (prefix stripped), shaped as config.json implies."""
    hidden, heads, kv, hd, inter = _dims(cfg)
    shapes: Shapes = {
        "embed_tokens.weight": (int(cfg["vocab_size"]), hidden),
        "norm.weight": (hidden,),
    }
    bias = bool(cfg.get("attention_bias", False))
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"layers.{i}."
        attn = {
            "q_proj": (heads * hd, hidden),
            "k_proj": (kv * hd, hidden),
            "v_proj": (kv * hd, hidden),
            "o_proj": (hidden, heads * hd),
        }
        for name, shape in attn.items():
            shapes[f"{p}self_attn.{name}.weight"] = shape
            if bias:
                shapes[f"{p}self_attn.{name}.bias"] = (shape[0],)
        shapes.update(
            {
                f"{p}self_attn.q_norm.weight": (hd,),
                f"{p}self_attn.k_norm.weight": (hd,),
                f"{p}mlp.gate_proj.weight": (inter, hidden),
                f"{p}mlp.up_proj.weight": (inter, hidden),
                f"{p}mlp.down_proj.weight": (hidden, inter),
                f"{p}input_layernorm.weight": (hidden,),
                f"{p}post_attention_layernorm.weight": (hidden,),
            }
        )
    return shapes


@dataclass(frozen=True)
class Qwen3Layer:
    qkv: Tensor  # q, k and v projections stacked: one GEMM instead of three
    qkv_b: Tensor | None
    o: Tensor
    o_b: Tensor | None
    q_norm: Tensor
    k_norm: Tensor
    gate_up: Tensor  # gate and up projections stacked
    down: Tensor
    ln1: Tensor
    ln2: Tensor

    @classmethod
    def build(cls, w: dict[str, Tensor], p: str) -> Qwen3Layer:
        a = f"{p}self_attn."
        biased = f"{a}q_proj.bias" in w
        return cls(
            qkv=torch.cat([w.pop(f"{a}{n}_proj.weight") for n in "qkv"]),
            qkv_b=torch.cat([w.pop(f"{a}{n}_proj.bias") for n in "qkv"]) if biased else None,
            o=w.pop(f"{a}o_proj.weight"),
            o_b=w.pop(f"{a}o_proj.bias", None),
            q_norm=w.pop(f"{a}q_norm.weight"),
            k_norm=w.pop(f"{a}k_norm.weight"),
            gate_up=torch.cat([w.pop(f"{p}mlp.gate_proj.weight"), w.pop(f"{p}mlp.up_proj.weight")]),
            down=w.pop(f"{p}mlp.down_proj.weight"),
            ln1=w.pop(f"{p}input_layernorm.weight"),
            ln2=w.pop(f"{p}post_attention_layernorm.weight"),
        )


class Qwen3:
    """Qwen3Model's forward: last hidden states after the final RMSNorm."""

    causal = True
    max_positions: int | None = None  # RoPE has no table to run off

    def __init__(self, cfg: dict[str, Any], w: dict[str, Tensor], source: Path) -> None:
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelError(f"{source}: Qwen3 hidden_act={cfg['hidden_act']!r} is not supported")
        if cfg.get("use_sliding_window"):
            raise ModelError(f"{source}: Qwen3 with use_sliding_window=true is not supported")
        _, self.heads, self.kv, self.head_dim, _ = _dims(cfg)
        self.eps = float(cfg["rms_norm_eps"])
        theta = qwen3_rope_theta(cfg, source)
        device = w["norm.weight"].device
        # As transformers' default RoPE init: float32 inverse frequencies.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
        self.inv_freq = 1.0 / (theta ** (exponents / self.head_dim))
        self.embed = w.pop("embed_tokens.weight")
        self.norm = w.pop("norm.weight")
        self.layers = [
            Qwen3Layer.build(w, f"layers.{i}.") for i in range(int(cfg["num_hidden_layers"]))
        ]

    def rope(self, t: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # Positions 0..T-1 whatever the padding, as Qwen3Model does without position_ids.
        positions = torch.arange(t, dtype=torch.float32, device=self.inv_freq.device)
        freqs = positions[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, ids: Tensor, real: Tensor | None, *, explicit: bool) -> Tensor:
        b, t = ids.shape
        packing = Packing(real, b, t)
        h = F.embedding(packing.gather(ids), self.embed)  # [N, H]: real tokens only
        cos, sin = self.rope(t, h.dtype)
        mask = None if real is None else attention_mask(real, causal=True)
        nq, nkv, hd = self.heads * self.head_dim, self.kv * self.head_dim, self.head_dim
        for L in self.layers:
            qkv = packing.scatter(F.linear(rms_norm(h, L.ln1, self.eps), L.qkv, L.qkv_b))
            q, k, v = qkv.split([nq, nkv, nkv], dim=-1)
            # Per-head RMSNorm on [B, T, heads, D], then heads first, then RoPE (HF's order).
            q = rms_norm(q.view(b, t, -1, hd), L.q_norm, self.eps).transpose(1, 2)
            k = rms_norm(k.view(b, t, -1, hd), L.k_norm, self.eps).transpose(1, 2)
            v = v.view(b, t, -1, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            o = attend(q, k, v, mask, causal=True, explicit=explicit).transpose(1, 2)
            h = h + F.linear(packing.gather(o).reshape(-1, nq), L.o, L.o_b)
            gate, up = F.linear(rms_norm(h, L.ln2, self.eps), L.gate_up).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, L.down)
        return packing.scatter(rms_norm(h, self.norm, self.eps))
