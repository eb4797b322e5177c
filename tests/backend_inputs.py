"""Recipes and padded batches built by hand, for testing a backend without the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from localrank.engine.types import Batch, Recipe

EOS = 151643
QWEN3 = Recipe(
    family="qwen3",
    pooling="last_token",
    padding_side="left",
    normalize=True,
    dim=64,
    max_tokens=8192,
    pad_token_id=EOS,
    eos_token_id=EOS,
)
MINILM = Recipe(
    family="bert",
    pooling="mean",
    padding_side="right",
    normalize=True,
    dim=384,
    max_tokens=256,
    pad_token_id=0,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pad(rows: list[list[int]], side: str, pad_id: int) -> Batch:
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), t), dtype=np.int64)
    for i, r in enumerate(rows):
        sl = slice(t - len(r), t) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    return Batch(input_ids=ids, attention_mask=mask)


def copy_model(
    src: Path,
    dst: Path,
    *,
    weights: dict[str, torch.Tensor] | None = None,
    **config_changes: object,
) -> Path:
    """A model folder sharing src's files, with its own config.json and, when `weights` is given,
    its own model.safetensors (none at all for an empty dict)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        own = f.name == "config.json" or (weights is not None and f.suffix == ".safetensors")
        if f.is_file() and not own:
            (dst / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    if weights:
        save_file(weights, str(dst / "model.safetensors"))
    return dst
