"""The torch families: config.json's model_type -> how to check and build the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from localrank.engine.torch.bert import Bert, bert_shapes
from localrank.engine.torch.layers import Shapes
from localrank.engine.torch.qwen3 import Qwen3, qwen3_shapes


class TorchModel(Protocol):
    """A family's forward, built from checked weights: what the embedder runs and pools."""

    causal: bool
    max_positions: int | None

    def forward(self, ids: Tensor, real: Tensor | None, *, explicit: bool) -> Tensor:
        """Last hidden states [B, T, H] for ids [B, T]; `real`: bool [B, T], None if unpadded."""
        ...


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
