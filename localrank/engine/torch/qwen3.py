"""Qwen3Model's forward in torch, on plain tensors (no nn.Module).

Matches transformers' `Qwen3Model` to float32 rounding and handles the same traps as the MLX
backend: positions 0..T-1 whatever the padding, rope_theta read from `rope_parameters` as
transformers 5 writes it, the per-head q_norm / k_norm, grouped-query attention. Projections that
read the same input are fused into one matmul when the weights are copied anyway (a cast).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.model_files import qwen3_rope_theta
from localrank.engine.torch.layers import (
    Linear,
    Packing,
    Shapes,
    attend,
    attention_mask,
    rms_norm,
    rope,
    signed_sin,
    small_pass,
)
from localrank.engine.torch.weights import Placement
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


class Projection:
    """Linear maps that read the same input (q/k/v; gate/up).

    When the weights must be copied anyway (a cast, a move to an accelerator) they are stacked
    while copying: one GEMM. When the checkpoint already holds them in the compute dtype they are
    used where they are mapped, uncopied (stacking would cost load time and a second copy of two
    thirds of the model), until the background repack or the int8 quantisation, which copy them
    anyway, stacks them (`stack`): one matmul, so one wake-up of the thread pool instead of
    three (one instructed query, 0.6B shape, bfloat16: 129 -> 115 ms on 2 cores).
    """

    def __init__(
        self, linears: tuple[Linear, ...], biases: tuple[Tensor | None, ...], sizes: tuple[int, ...]
    ) -> None:
        # One attribute, replaced whole: a forward running meanwhile sees one form or the other.
        self.parts = (linears, biases)
        self.sizes = sizes

    @classmethod
    def build(cls, ws: list[Tensor], bs: list[Tensor] | None, place: Placement) -> Projection:
        sizes = tuple(int(w.shape[0]) for w in ws)
        if place.needs_copy(ws[0]):
            bias = None if bs is None else place.stack(bs)
            return cls((Linear(place.stack(ws)),), (bias,), sizes)
        biases = [None] * len(ws) if bs is None else [place.put(b) for b in bs]
        return cls(tuple(Linear(place.put(w)) for w in ws), tuple(biases), sizes)

    @property
    def linears(self) -> tuple[Linear, ...]:
        return self.parts[0]

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        linears, biases = self.parts
        if len(linears) == 1:
            return linears[0](x, biases[0]).split(self.sizes, dim=-1)
        return tuple(lin(x, b) for lin, b in zip(linears, biases, strict=True))

    def stack(
        self, pack: Callable[[Tensor], Tensor] | None = None, *, shape_only: bool = False
    ) -> list[Tensor] | None:
        """Stack the parts into one matmul: a float weight (before quantising them together:
        one int8 matmul, and one quantisation of its input, instead of three; their
        calibration statistics carry over, the parts read the same input), or, with `pack`,
        one that exists in that layout only (cpu.prepack), or, `shape_only`, a weight with the
        stacked shape and no data (int8 weights mapped from the cache take its place: the float
        ones are not read). Returns the weights it replaced (for their mapped pages to be
        released), or None when there was nothing to stack."""
        linears, biases = self.parts
        if len(linears) < 2 or any(lin.packed is not None or lin.int8 for lin in linears):
            return None
        weights = [lin.weight for lin in linears]
        if shape_only:
            rows = sum(w.shape[0] for w in weights)
            stacked = Linear(torch.empty((rows, weights[0].shape[1]), device="meta"))
        elif pack is None:
            stacked = Linear(torch.cat(weights))
            stacked.seen = linears[0].seen
        else:
            stacked = Linear.packed_only(pack(torch.cat(weights)), sum(x.macs for x in linears))
        bias = None if biases[0] is None else torch.cat([b for b in biases if b is not None])
        self.parts = ((stacked,), (bias,))
        return weights


@dataclass(frozen=True)
class Qwen3Layer:
    qkv: Projection
    o: Linear
    o_b: Tensor | None
    q_norm: Tensor  # norm weights in float32: the norms run in float32 whatever the dtype
    k_norm: Tensor
    gate_up: Projection
    down: Linear
    ln1: Tensor
    ln2: Tensor

    @classmethod
    def build(cls, w: dict[str, Tensor], p: str, place: Placement) -> Qwen3Layer:
        a = f"{p}self_attn."
        biased = f"{a}q_proj.bias" in w
        o_b = w.pop(f"{a}o_proj.bias", None)
        f32 = torch.float32
        return cls(
            qkv=Projection.build(
                [w.pop(f"{a}{n}_proj.weight") for n in "qkv"],
                [w.pop(f"{a}{n}_proj.bias") for n in "qkv"] if biased else None,
                place,
            ),
            o=Linear(place.put(w.pop(f"{a}o_proj.weight"))),
            o_b=None if o_b is None else place.put(o_b),
            q_norm=place.put(w.pop(f"{a}q_norm.weight"), f32),
            k_norm=place.put(w.pop(f"{a}k_norm.weight"), f32),
            gate_up=Projection.build(
                [w.pop(f"{p}mlp.gate_proj.weight"), w.pop(f"{p}mlp.up_proj.weight")], None, place
            ),
            down=Linear(place.put(w.pop(f"{p}mlp.down_proj.weight"))),
            ln1=place.put(w.pop(f"{p}input_layernorm.weight"), f32),
            ln2=place.put(w.pop(f"{p}post_attention_layernorm.weight"), f32),
        )

    def linears(self) -> list[Linear]:
        return [*self.qkv.linears, self.o, *self.gate_up.linears, self.down]


class Qwen3:
    """Qwen3Model's forward: last hidden states after the final RMSNorm.

    Matmuls run in the compute dtype; the residual stream, every RMSNorm, RoPE, attention's
    softmax and the output stay float32. In float32 this is transformers' forward exactly; in
    bfloat16 it is closer to the float32 result than transformers' own bfloat16 forward, whose
    residual stream is rounded to bfloat16 after every layer.
    """

    causal = True
    max_positions: int | None = None  # RoPE has no table to run off

    def __init__(
        self, cfg: dict[str, Any], w: dict[str, Tensor], source: Path, place: Placement
    ) -> None:
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelError(f"{source}: Qwen3 hidden_act={cfg['hidden_act']!r} is not supported")
        if cfg.get("use_sliding_window"):
            raise ModelError(f"{source}: Qwen3 with use_sliding_window=true is not supported")
        _, self.heads, self.kv, self.head_dim, _ = _dims(cfg)
        self.eps = float(cfg["rms_norm_eps"])
        self.dtype = place.dtype
        theta = qwen3_rope_theta(cfg, source)
        # As transformers' default RoPE init: float32 inverse frequencies.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=place.device)
        self.inv_freq = 1.0 / (theta ** (exponents / self.head_dim))
        embed = w.pop("embed_tokens.weight")
        # On CPU the token table stays as stored (mapped, never copied: a lookup touches only the
        # rows it reads, and widening a row to float32 is exact). Elsewhere: on the device.
        self.embed = embed if place.device.type == "cpu" else place.put(embed)
        self.norm = place.put(w.pop("norm.weight"), torch.float32)
        # Layers are placed on a thread per core: a cast (bfloat16 -> float32) is a copy into
        # fresh memory whose page faults and conversion run single-threaded inside torch, so
        # one layer at a time left a core idle (the 0.6B model: 1.7 s -> 0.9 s on 2 cores).
        # Each layer pops its own keys; the copies release the GIL.
        n = int(cfg["num_hidden_layers"])
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            self.layers = list(
                pool.map(lambda i: Qwen3Layer.build(w, f"layers.{i}.", place), range(n))
            )
        # Each layer's q_norm and k_norm weights as one weight per head, [q heads + kv heads, D].
        self.qk_norms = [
            torch.cat([L.q_norm.expand(self.heads, -1), L.k_norm.expand(self.kv, -1)])
            for L in self.layers
        ]

    def linears(self) -> list[Linear]:
        """Every matmul weight (what `prepack` may repack)."""
        return [lin for layer in self.layers for lin in layer.linears()]

    @property
    def int8(self) -> bool:
        """Whether every matmul computes in int8 (int8.py)."""
        return all(lin.int8 is not None for layer in self.layers for lin in layer.linears())

    def projections(self) -> list[Projection]:
        """The stackable ones among them (what `prepack` stacks)."""
        return [p for layer in self.layers for p in (layer.qkv, layer.gate_up)]

    def rope(self, t: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        # Positions 0..T-1 whatever the padding, as Qwen3Model does without position_ids
        # (RoPE is relative: shifting every real token alike changes nothing). After a cached
        # prefix of P tokens: P..P+T-1.
        positions = torch.arange(
            offset, offset + t, dtype=torch.float32, device=self.inv_freq.device
        )
        freqs = positions[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def prefill(self, ids: list[int]) -> Prefix:
        """Every layer's keys and values for `ids` (one unpadded row): what later rows that start
        with these tokens reuse instead of recomputing them (causal attention: a token's keys and
        values depend on the tokens before it only)."""
        device = self.inv_freq.device
        row = torch.tensor([ids], dtype=torch.int64, device=device)
        kv: list[tuple[Tensor, Tensor]] = []
        self.forward(row, None, explicit=False, capture=kv)
        return Prefix(tuple(ids), kv)

    def forward(
        self,
        ids: Tensor,
        real: Tensor | None,
        *,
        explicit: bool,
        prefix: Prefix | None = None,
        capture: list[tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """Last hidden states for `ids` [B, T]. With `prefix`, the rows continue a cached prefix
        (they hold only the tokens after it, right-padded) and attend to its keys and values too.
        `capture` collects each layer's keys and values (for `prefill`)."""
        b, t = ids.shape
        cd, f32 = self.dtype, torch.float32
        # In int8 no op is compiled per shape (the matmuls are int8.py's; norms, RoPE, attention
        # and SiLU are torch's own CPU kernels): no rows added to round N up.
        packing = Packing(real, b, t, bucket=not self.int8)
        # The residual stream, [N, H] over real tokens only, in float32.
        with small_pass(packing.n):
            h = F.embedding(packing.gather(ids), self.embed).to(f32)
            offset = 0 if prefix is None else len(prefix.ids)
            # RoPE's tables by packed row: each real token at its column's position.
            cols = packing.columns(ids.device)
            cos, sin = self.rope(t, offset)
            cos, sin_signed = cos[cols][:, None], signed_sin(sin)[cols][:, None]
            mask = None if real is None else attention_mask(real, causal=True)
            if prefix is not None:
                # Every row sees the whole prefix, then its own tokens causally.
                own = mask if mask is not None else causal_mask(t, ids.device)[None, None]
                seen = torch.ones(own.shape[0], 1, t, offset, dtype=torch.bool, device=ids.device)
                mask = torch.cat([seen.expand(b, 1, t, offset), own.expand(b, 1, t, t)], dim=-1)
            hd, hq = self.head_dim, self.heads
            for i, (L, qk_norm) in enumerate(zip(self.layers, self.qk_norms, strict=True)):
                q, k, v = L.qkv(rms_norm(h, L.ln1, self.eps).to(cd))
                # q and k heads side by side, on the real tokens only: per-head RMSNorm then
                # RoPE (HF's order) as one op each, then one scatter to the padded layout.
                qk = joined(q, k).view(q.shape[0], -1, hd).to(f32)
                qk = rope(rms_norm(qk, qk_norm, self.eps), cos, sin_signed).to(cd)
                qk = packing.scatter(qk.view(qk.shape[0], -1)).view(b, t, -1, hd).transpose(1, 2)
                q, k = qk[:, :hq], qk[:, hq:]
                v = packing.scatter(v).view(b, t, -1, hd).transpose(1, 2)
                if capture is not None:
                    capture.append((k, v))
                if prefix is not None:
                    pk, pv = prefix.kv[i]
                    k = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)
                    v = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
                o = attend(q, k, v, mask, causal=True, explicit=explicit).transpose(1, 2)
                # Adding a bfloat16 product to the float32 stream widens it exactly, in one op.
                h = h + L.o(packing.gather(o).reshape(-1, self.heads * hd), L.o_b)
                gate, up = L.gate_up(rms_norm(h, L.ln2, self.eps).to(cd))
                h = h + L.down(F.silu(gate.to(f32)).mul_(up).to(cd))
            return packing.scatter(rms_norm(h, self.norm, self.eps))


@dataclass(frozen=True)
class Prefix:
    """A token prefix many inputs share (a query instruction), and each layer's keys and values
    for it, in the compute dtype, [1, kv heads, P, head dim] (after k_norm and RoPE)."""

    ids: tuple[int, ...]
    kv: list[tuple[Tensor, Tensor]]


def joined(q: Tensor, k: Tensor) -> Tensor:
    """[rows, q width + k width]: a view when q and k are adjacent columns of one stacked
    projection's output (the usual case), else a copy."""
    if (
        q.dtype == k.dtype
        and q.stride() == k.stride()
        and q.stride(1) == 1
        and k.data_ptr() == q.data_ptr() + q.shape[1] * q.element_size()
        and q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
    ):
        return q.as_strided((q.shape[0], q.shape[1] + k.shape[1]), q.stride())
    return torch.cat([q, k], dim=1)


def causal_mask(t: int, device: torch.device) -> Tensor:
    return torch.ones(t, t, dtype=torch.bool, device=device).tril_()
