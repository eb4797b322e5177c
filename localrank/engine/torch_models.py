"""Our own PyTorch forward passes for Qwen3 and BERT, on plain tensors (no nn.Module).

transformers is the reference, never a runtime dependency: importing its modeling modules costs
seconds of cold start. These forwards are written to match `Qwen3Model` and `BertModel` (as
sentence-transformers runs them) to float32 rounding, and handle the same traps as the MLX
backend: boolean masks in which every query may attend to itself (so left-padded rows never go
NaN), positions 0..T-1 whatever the padding, rope_theta read from `rope_parameters` as
transformers 5 writes it, Qwen3's per-head q_norm / k_norm, grouped-query attention, BERT's
post-LayerNorm with exact (erf) GELU.

A model is built from a dict of already checked, cast tensors (`qwen3_shapes` / `bert_shapes`
tell the loader what to check). For speed on CPU: projections that read the same input are fused
into one matmul at build time, and token-wise work runs on the real tokens only (`Packing`), so
padding costs attention time and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.model_files import qwen3_rope_theta
from localrank.errors import ModelError

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]
# SDPA's enable_gqa (torch >= 2.5) shares k/v heads without copying them; older: repeat them.
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class TorchModel(Protocol):
    causal: bool
    max_positions: int | None

    def forward(self, ids: Tensor, real: Tensor | None, *, explicit: bool) -> Tensor:
        """Last hidden states [B, T, H] for ids [B, T]; `real`: bool [B, T], None if unpadded."""
        ...


# ----------------------------------------------------------------------------- attention


def attention_mask(real: Tensor, *, causal: bool) -> Tensor:
    """Boolean mask (True = may attend): [B, 1, T, T] if causal, else [B, 1, 1, T].

    Causal: each query may always attend to itself, so a left-padding query (which sees no real
    key) never gets an empty softmax row; real queries already see themselves, so they are
    unchanged. Bidirectional: every row has a real token (the backend checks), so keys suffice.
    """
    keys = real[:, None, None, :]
    if not causal:
        return keys
    t = real.shape[1]
    tril = torch.ones(t, t, dtype=torch.bool, device=real.device).tril_()
    return (keys & tril) | torch.eye(t, dtype=torch.bool, device=real.device)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, causal: bool,
           explicit: bool) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q [B, Hq, T, D] and k, v [B, Hkv, T, D] (Hq % Hkv == 0).

    `mask` None means no padding (plain causal or full attention). `explicit` is matmul +
    float32 softmax, for devices whose SDPA kernels are unreliable (MPS: NaN for Qwen3).
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and (explicit or not _SDPA_GQA):
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if explicit:
        # Scale q before the product (less fp16 overflow); softmax in float32 as HF's eager.
        scores = ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).float()
        if mask is None and causal:
            t = q.shape[2]
            mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril_()
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1).to(v.dtype) @ v
    if groups > 1 and _SDPA_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                              is_causal=causal and mask is None, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                          is_causal=causal and mask is None)


class Packing:
    """Where the real tokens of a padded [B, T] batch are.

    Token-wise work (projections, MLP, norms: ~90% of the FLOPs) runs on the N real tokens
    packed as [N, D], so padding costs nothing there; only attention sees the padded layout.
    Without padding, packing is a free reshape.
    """

    def __init__(self, real: Tensor | None, b: int, t: int) -> None:
        self.b, self.t = b, t
        self.idx = None if real is None else real.flatten().nonzero().squeeze(1)

    def gather(self, x: Tensor) -> Tensor:
        """[B, T, ...] -> [N, ...]: the real tokens, in row-major order."""
        flat = x.reshape(self.b * self.t, *x.shape[2:])
        return flat if self.idx is None else flat.index_select(0, self.idx)

    def scatter(self, x: Tensor) -> Tensor:
        """[N, D] -> [B, T, D], zeros at padding."""
        if self.idx is None:
            return x.view(self.b, self.t, -1)
        out = x.new_zeros(self.b * self.t, x.shape[-1])
        return out.index_copy_(0, self.idx, x).view(self.b, self.t, -1)


# ----------------------------------------------------------------------------- Qwen3


def _qwen3_dims(cfg: dict[str, Any]) -> tuple[int, int, int, int, int]:
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return hidden, heads, kv, head_dim, int(cfg["intermediate_size"])


def qwen3_shapes(cfg: dict[str, Any]) -> Shapes:
    hidden, heads, kv, hd, inter = _qwen3_dims(cfg)
    shapes: Shapes = {"embed_tokens.weight": (int(cfg["vocab_size"]), hidden),
                      "norm.weight": (hidden,)}
    bias = bool(cfg.get("attention_bias", False))
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"layers.{i}."
        attn = {"q_proj": (heads * hd, hidden), "k_proj": (kv * hd, hidden),
                "v_proj": (kv * hd, hidden), "o_proj": (hidden, heads * hd)}
        for name, shape in attn.items():
            shapes[f"{p}self_attn.{name}.weight"] = shape
            if bias:
                shapes[f"{p}self_attn.{name}.bias"] = (shape[0],)
        shapes.update({
            f"{p}self_attn.q_norm.weight": (hd,), f"{p}self_attn.k_norm.weight": (hd,),
            f"{p}mlp.gate_proj.weight": (inter, hidden), f"{p}mlp.up_proj.weight": (inter, hidden),
            f"{p}mlp.down_proj.weight": (hidden, inter),
            f"{p}input_layernorm.weight": (hidden,),
            f"{p}post_attention_layernorm.weight": (hidden,),
        })
    return shapes


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # As Qwen3RMSNorm: statistics in float32, scaled back in the input dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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
            o=w.pop(f"{a}o_proj.weight"), o_b=w.pop(f"{a}o_proj.bias", None),
            q_norm=w.pop(f"{a}q_norm.weight"), k_norm=w.pop(f"{a}k_norm.weight"),
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
        _, self.heads, self.kv, self.head_dim, _ = _qwen3_dims(cfg)
        self.eps = float(cfg["rms_norm_eps"])
        theta = qwen3_rope_theta(cfg, source)
        device = w["norm.weight"].device
        # As transformers' default RoPE init: float32 inverse frequencies.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
        self.inv_freq = 1.0 / (theta ** (exponents / self.head_dim))
        self.embed = w.pop("embed_tokens.weight")
        self.norm = w.pop("norm.weight")
        self.layers = [Qwen3Layer.build(w, f"layers.{i}.")
                       for i in range(int(cfg["num_hidden_layers"]))]

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


# ----------------------------------------------------------------------------- BERT


ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as HF's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def bert_shapes(cfg: dict[str, Any]) -> Shapes:
    hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    shapes: Shapes = {
        "embeddings.word_embeddings.weight": (int(cfg["vocab_size"]), hidden),
        "embeddings.position_embeddings.weight": (int(cfg["max_position_embeddings"]), hidden),
        "embeddings.token_type_embeddings.weight": (int(cfg.get("type_vocab_size", 2)), hidden),
        "embeddings.LayerNorm.weight": (hidden,), "embeddings.LayerNorm.bias": (hidden,),
    }
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        square = (hidden, hidden)
        dense = {"attention.self.query": square, "attention.self.key": square,
                 "attention.self.value": square, "attention.output.dense": square,
                 "intermediate.dense": (inter, hidden), "output.dense": (hidden, inter)}
        for name, shape in dense.items():
            shapes[f"{p}{name}.weight"], shapes[f"{p}{name}.bias"] = shape, (shape[0],)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}{ln}.weight"], shapes[f"{p}{ln}.bias"] = (hidden,), (hidden,)
    return shapes


@dataclass(frozen=True)
class BertLayer:
    qkv: Tensor  # query, key and value stacked: one GEMM instead of three
    qkv_b: Tensor
    o: Tensor
    o_b: Tensor
    ln1: Tensor
    ln1_b: Tensor
    up: Tensor
    up_b: Tensor
    down: Tensor
    down_b: Tensor
    ln2: Tensor
    ln2_b: Tensor

    @classmethod
    def build(cls, w: dict[str, Tensor], p: str) -> BertLayer:
        s = f"{p}attention.self."
        names = ("query", "key", "value")
        return cls(
            qkv=torch.cat([w.pop(f"{s}{n}.weight") for n in names]),
            qkv_b=torch.cat([w.pop(f"{s}{n}.bias") for n in names]),
            o=w.pop(f"{p}attention.output.dense.weight"),
            o_b=w.pop(f"{p}attention.output.dense.bias"),
            ln1=w.pop(f"{p}attention.output.LayerNorm.weight"),
            ln1_b=w.pop(f"{p}attention.output.LayerNorm.bias"),
            up=w.pop(f"{p}intermediate.dense.weight"), up_b=w.pop(f"{p}intermediate.dense.bias"),
            down=w.pop(f"{p}output.dense.weight"), down_b=w.pop(f"{p}output.dense.bias"),
            ln2=w.pop(f"{p}output.LayerNorm.weight"), ln2_b=w.pop(f"{p}output.LayerNorm.bias"),
        )


class Bert:
    """BertModel's forward (no pooler): last hidden states, single-segment inputs."""

    causal = False

    def __init__(self, cfg: dict[str, Any], w: dict[str, Tensor], source: Path) -> None:
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"{source}: BERT position_embedding_type="
                             f"{cfg['position_embedding_type']!r} is not supported")
        act = cfg.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ModelError(f"{source}: BERT hidden_act={act!r} is not supported")
        self.act = ACTIVATIONS[act]
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.max_positions: int | None = int(cfg["max_position_embeddings"])
        e = "embeddings."
        self.word = w.pop(f"{e}word_embeddings.weight")
        self.position = w.pop(f"{e}position_embeddings.weight")
        self.token_type0 = w.pop(f"{e}token_type_embeddings.weight")[0]  # single-segment inputs
        self.ln = (w.pop(f"{e}LayerNorm.weight"), w.pop(f"{e}LayerNorm.bias"))
        self.layers = [BertLayer.build(w, f"encoder.layer.{i}.")
                       for i in range(int(cfg["num_hidden_layers"]))]

    def forward(self, ids: Tensor, real: Tensor | None, *, explicit: bool) -> Tensor:
        b, t = ids.shape
        hd = self.hidden // self.heads
        packing = Packing(real, b, t)
        # HF's order: (word + token type) + position, positions 0..T-1 (right padding).
        h = F.embedding(ids, self.word) + self.token_type0 + self.position[:t]
        h = F.layer_norm(packing.gather(h), (self.hidden,), *self.ln, eps=self.eps)  # [N, H]
        mask = None if real is None else attention_mask(real, causal=False)
        for L in self.layers:
            qkv = packing.scatter(F.linear(h, L.qkv, L.qkv_b)).view(b, t, 3, self.heads, hd)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, D]
            o = attend(q, k, v, mask, causal=False, explicit=explicit).transpose(1, 2)
            o = F.linear(packing.gather(o).reshape(-1, self.hidden), L.o, L.o_b)
            # Post-LN: residual first, then LayerNorm (BertSelfOutput / BertOutput).
            h = F.layer_norm(o + h, (self.hidden,), L.ln1, L.ln1_b, eps=self.eps)
            x = F.linear(self.act(F.linear(h, L.up, L.up_b)), L.down, L.down_b)
            h = F.layer_norm(x + h, (self.hidden,), L.ln2, L.ln2_b, eps=self.eps)
        return packing.scatter(h)


# ----------------------------------------------------------------------------- registry


# model_type -> (class, expected shapes, the prefix *For... / pretraining checkpoints add to keys)
ARCHITECTURES: dict[str, tuple[type[Qwen3] | type[Bert], Any, str]] = {
    "qwen3": (Qwen3, qwen3_shapes, "model."),
    "bert": (Bert, bert_shapes, "bert."),
}

__all__ = ["ARCHITECTURES", "Bert", "Qwen3", "TorchModel", "attend", "attention_mask",
           "rms_norm"]
