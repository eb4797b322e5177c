"""BertModel's forward in torch (as sentence-transformers runs it), on plain tensors.

Matches transformers' `BertModel` to float32 rounding: post-LayerNorm, exact (erf) GELU,
absolute positions, single-segment inputs. query, key and value are fused into one matmul at
build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.torch.layers import (
    Linear,
    Packing,
    Shapes,
    attend,
    attention_mask,
    small_pass,
)
from localrank.engine.torch.weights import Placement
from localrank.errors import ModelError

ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as HF's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def bert_shapes(cfg: dict[str, Any]) -> Shapes:
    """Every weight a BERT checkpoint needs (prefix stripped), shaped as config.json implies."""
    hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    shapes: Shapes = {
        "embeddings.word_embeddings.weight": (int(cfg["vocab_size"]), hidden),
        "embeddings.position_embeddings.weight": (int(cfg["max_position_embeddings"]), hidden),
        "embeddings.token_type_embeddings.weight": (int(cfg.get("type_vocab_size", 2)), hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        square = (hidden, hidden)
        dense = {
            "attention.self.query": square,
            "attention.self.key": square,
            "attention.self.value": square,
            "attention.output.dense": square,
            "intermediate.dense": (inter, hidden),
            "output.dense": (hidden, inter),
        }
        for name, shape in dense.items():
            shapes[f"{p}{name}.weight"], shapes[f"{p}{name}.bias"] = shape, (shape[0],)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}{ln}.weight"], shapes[f"{p}{ln}.bias"] = (hidden,), (hidden,)
    return shapes


def _matmul(name: str) -> bool:
    """A matmul's weight or bias (computed in the compute dtype; the rest stays float32)."""
    return not name.startswith("embeddings.") and "LayerNorm" not in name


@dataclass(frozen=True)
class BertLayer:
    qkv: Linear  # query, key and value stacked: one GEMM instead of three
    qkv_b: Tensor
    o: Linear
    o_b: Tensor
    ln1: Tensor
    ln1_b: Tensor
    up: Linear
    up_b: Tensor
    down: Linear
    down_b: Tensor
    ln2: Tensor
    ln2_b: Tensor

    @classmethod
    def build(cls, w: dict[str, Tensor], p: str) -> BertLayer:
        s = f"{p}attention.self."
        names = ("query", "key", "value")
        return cls(
            qkv=Linear(torch.cat([w.pop(f"{s}{n}.weight") for n in names])),
            qkv_b=torch.cat([w.pop(f"{s}{n}.bias") for n in names]),
            o=Linear(w.pop(f"{p}attention.output.dense.weight")),
            o_b=w.pop(f"{p}attention.output.dense.bias"),
            ln1=w.pop(f"{p}attention.output.LayerNorm.weight"),
            ln1_b=w.pop(f"{p}attention.output.LayerNorm.bias"),
            up=Linear(w.pop(f"{p}intermediate.dense.weight")),
            up_b=w.pop(f"{p}intermediate.dense.bias"),
            down=Linear(w.pop(f"{p}output.dense.weight")),
            down_b=w.pop(f"{p}output.dense.bias"),
            ln2=w.pop(f"{p}output.LayerNorm.weight"),
            ln2_b=w.pop(f"{p}output.LayerNorm.bias"),
        )

    def linears(self) -> list[Linear]:
        return [self.qkv, self.o, self.up, self.down]


class Bert:
    """BertModel's forward (no pooler): last hidden states, single-segment inputs."""

    causal = False

    def __init__(
        self, cfg: dict[str, Any], w: dict[str, Tensor], source: Path, place: Placement
    ) -> None:
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(
                f"{source}: BERT position_embedding_type="
                f"{cfg['position_embedding_type']!r} is not supported"
            )
        act = cfg.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ModelError(f"{source}: BERT hidden_act={act!r} is not supported")
        self.act = ACTIVATIONS[act]
        # Small models: the matmul weights and biases in the compute dtype, embeddings and
        # LayerNorms in float32, on the device (a no-op where the checkpoint already is).
        self.dtype = place.dtype
        w = {k: place.put(v, None if _matmul(k) else torch.float32) for k, v in w.items()}
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        # XLM-RoBERTa numbers positions from padding_idx + 1 (transformers'
        # create_position_ids_from_input_ids); BERT from 0.
        roberta = cfg.get("model_type") == "xlm-roberta"
        self.position_offset = int(cfg.get("pad_token_id", 1)) + 1 if roberta else 0
        self.max_positions: int | None = int(cfg["max_position_embeddings"]) - self.position_offset
        e = "embeddings."
        self.word = w.pop(f"{e}word_embeddings.weight")
        self.position = w.pop(f"{e}position_embeddings.weight")
        self.token_type = w.pop(f"{e}token_type_embeddings.weight")
        self.token_type0 = self.token_type[0]  # single-segment inputs
        self.ln = (w.pop(f"{e}LayerNorm.weight"), w.pop(f"{e}LayerNorm.bias"))
        self.layers = [
            BertLayer.build(w, f"encoder.layer.{i}.") for i in range(int(cfg["num_hidden_layers"]))
        ]

    def linears(self) -> list[Linear]:
        """Every matmul weight (what the int8 path quantises)."""
        return [lin for layer in self.layers for lin in layer.linears()]

    def forward(
        self, ids: Tensor, real: Tensor | None, *, explicit: bool, types: Tensor | None = None
    ) -> Tensor:
        """`types`: segment ids of (query, document) pairs; None: every token in segment 0."""
        b, t = ids.shape
        hd = self.hidden // self.heads
        packing = Packing(real, b, t)
        with small_pass(packing.n):
            segment = self.token_type0 if types is None else F.embedding(types, self.token_type)
            # HF's order: (word + token type) + position; positions from the offset on (right
            # padding: a padding token's position is never read).
            positions = self.position[self.position_offset : self.position_offset + t]
            h = F.embedding(ids, self.word) + segment + positions
            h = F.layer_norm(packing.gather(h), (self.hidden,), *self.ln, eps=self.eps)  # [N, H]
            mask = None if real is None else attention_mask(real, causal=False)
            cd = self.dtype
            for L in self.layers:
                qkv = packing.scatter(L.qkv(h.to(cd), L.qkv_b)).view(b, t, 3, self.heads, hd)
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, D]
                o = attend(q, k, v, mask, causal=False, explicit=explicit).transpose(1, 2)
                o = L.o(packing.gather(o).reshape(-1, self.hidden), L.o_b)
                # Post-LN: residual first, then LayerNorm (BertSelfOutput / BertOutput); a
                # half-precision product widens exactly as it is added to the float32 stream.
                h = F.layer_norm(o + h, (self.hidden,), L.ln1, L.ln1_b, eps=self.eps)
                x = L.down(self.act(L.up(h.to(cd), L.up_b).float()).to(cd), L.down_b)
                h = F.layer_norm(x + h, (self.hidden,), L.ln2, L.ln2_b, eps=self.eps)
            return packing.scatter(h)
