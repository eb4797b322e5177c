"""PyTorch backend on mps / cuda / cpu, through transformers' model classes.

torch and transformers are imported only here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel
from transformers.utils import logging as hf_logging

from localrank.engine.types import BackendInfo, Batch, Recipe
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)
# A daemon's log is no place for tqdm bars.
hf_logging.disable_progress_bar()

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_dtype(device: str) -> str:
    # Half precision on accelerators halves memory and is what the authors ship; on CPU float32
    # is both faster (no native half matmuls on most CPUs) and exact.
    return "float32" if device == "cpu" else "float16"


class TorchEmbedder:
    """A transformers model on one torch device, pooled by the recipe."""

    def __init__(self, model_dir: Path, recipe: Recipe, *, device: str = "cpu",
                 dtype: str = "auto") -> None:
        self.recipe = recipe
        dtype = default_dtype(device) if dtype == "auto" else dtype
        # SDPA gives NaN for Qwen3 on some macOS/MPS versions; eager attention does not.
        attn = "eager" if device == "mps" else "sdpa"
        try:
            model: Any = AutoModel.from_pretrained(
                str(model_dir), dtype=_DTYPES[dtype], attn_implementation=attn,
                trust_remote_code=False, local_files_only=True,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot load {model_dir} with transformers: {exc}") from exc
        try:
            model = model.to(device).eval()
        except (RuntimeError, AssertionError) as exc:
            raise BackendError(f"cannot move the model to torch device {device!r}: {exc}") from exc
        self.model = model
        self.device = torch.device(device)
        param = next(model.parameters())
        hidden = int(model.config.hidden_size)
        if hidden != recipe.dim:
            raise ModelError(f"{model_dir}: model hidden size {hidden} != recipe dim {recipe.dim}")
        self.info = BackendInfo(
            backend="torch",
            device=param.device.type,
            dtype=str(param.dtype).removeprefix("torch."),
            dim=hidden,
            pooling=recipe.pooling,
            max_tokens=recipe.max_tokens,
        )

    def embed(self, batch: Batch) -> np.ndarray:
        ids = torch.from_numpy(batch.input_ids).to(self.device)
        mask = torch.from_numpy(batch.attention_mask).to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = pool(hidden, mask, self.recipe.pooling)
            return pooled.float().cpu().numpy()

    def clear_cache(self) -> None:
        if self.device.type == "mps":
            torch.mps.empty_cache()
        elif self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        del self.model
        self.clear_cache()


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "last_token":
        # Index of each row's last real token: correct for left and right padding alike.
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    raise ModelError(f"unknown pooling {pooling!r}")


def device_available(device: str) -> bool:
    if device == "cpu":
        return True
    if device == "cuda":
        return bool(torch.cuda.is_available())
    if device == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return False
