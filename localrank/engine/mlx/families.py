"""The MLX families: config.json's model_type -> how to build the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrank.engine.mlx.bert import Bert
from localrank.engine.mlx.layers import MLXModel
from localrank.engine.mlx.qwen3 import Qwen3


@dataclass(frozen=True)
class Family:
    """How to build one model_type; the weights are checked against the built model's own."""

    build: Callable[[dict[str, Any], Path], MLXModel]
    prefix: str  # what *For... / pretraining checkpoints add to every key
    # Parameters (by name suffix) kept in float32 whatever the compute dtype: the forward
    # computes these norms in float32, so rounding their weights would only lose accuracy.
    float32_params: tuple[str, ...] = ()
    # Whether dtype "auto" may quantise a float checkpoint to 8 bits at load where a probe
    # finds MLX's quantised matmul faster (as torch's families: Qwen3, whose short queries read
    # every weight once).
    int8_auto: bool = False


FAMILIES: dict[str, Family] = {
    "qwen3": Family(Qwen3, "model.", float32_params=("norm.weight",), int8_auto=True),
    "bert": Family(Bert, "bert."),
}
