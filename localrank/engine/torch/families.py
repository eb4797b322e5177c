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


@dataclass(frozen=True)
class Family:
    """How to load one model_type. `build` consumes the checked, cast weights it is given."""

    build: Callable[[dict[str, Any], dict[str, Tensor], Path], TorchModel]
    shapes: Callable[[dict[str, Any]], Shapes]  # what the loader checks the weights against
    prefix: str  # what *For... / pretraining checkpoints add to every key


FAMILIES: dict[str, Family] = {
    "qwen3": Family(Qwen3, qwen3_shapes, "model."),
    "bert": Family(Bert, bert_shapes, "bert."),
}
