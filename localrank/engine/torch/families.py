"""The torch families: config.json's model_type -> how to check and build the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from localrank.engine.torch.bert import Bert, bert_shapes
from localrank.engine.torch.layers import Shapes, TorchModel
from localrank.engine.torch.qwen3 import Qwen3, qwen3_shapes
from localrank.engine.torch.weights import Placement


@dataclass(frozen=True)
class Family:
    """How to load one model_type. `build` consumes the checked weights it is given (as stored,
    mapped) and places them with the Placement (device, compute dtype)."""

    build: Callable[[dict[str, Any], dict[str, Tensor], Path, Placement], TorchModel]
    shapes: Callable[[dict[str, Any]], Shapes]  # what the loader checks the weights against
    prefix: str  # what *For... / pretraining checkpoints add to every key
    # Whether the forward keeps norms, softmax and the residual stream in float32 around
    # half-precision matmuls, which is what lets "auto" pick bfloat16 on a CPU that has it.
    mixed_precision: bool = False
    # Weights the CPU forward uses as stored, whatever the compute dtype (Qwen3's token table:
    # a lookup reads a few rows, and widening a row is exact): never cast, never cached.
    kept_as_stored: frozenset[str] = frozenset()
    # Whether "auto" may pick int8 where bfloat16 is not native and a probe finds int8 faster
    # (precision.choose_cpu_dtype; the load's accuracy check can still send it back to
    # float32). Qwen3 opts in: its matmuls read every weight for a short query, which int8's
    # half of float32's bytes makes ~1.3x faster, and its memory falls from 2.2 to 1.6 GB at
    # the 0.6B shape (docs/models.md). BERT-sized models gain nothing worth a calibration.
    # `--dtype int8` serves any family.
    int8_auto: bool = False


FAMILIES: dict[str, Family] = {
    "qwen3": Family(
        Qwen3,
        qwen3_shapes,
        "model.",
        mixed_precision=True,
        kept_as_stored=frozenset({"embed_tokens.weight"}),
        int8_auto=True,
    ),
    "bert": Family(Bert, bert_shapes, "bert.", mixed_precision=True),
}
