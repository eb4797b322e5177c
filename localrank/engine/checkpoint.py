"""Framework-free rules both backends share: checkpoint config values and batch validation.

Kept free of torch and mlx imports so each backend can use it without importing the other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from localrank.engine.types import Batch
from localrank.errors import InvalidInput, ModelError

log = logging.getLogger(__name__)

T = TypeVar("T")
# Keys a checkpoint may carry that no embedding forward pass reads.
IGNORED_PREFIXES = ("lm_head.", "pooler.", "cls.")
IGNORED_SUFFIXES = ("position_ids", "token_type_ids", "rotary_emb.inv_freq")


def qwen3_rope_theta(cfg: dict[str, Any], source: Path) -> float:
    """rope_theta the way transformers 5 resolves it: `rope_parameters` (or legacy
    `rope_scaling`) first, then the top-level key. Absent from both is an error: transformers
    would default to 1e4 while every published Qwen3 uses 1e6, and guessing silently is exactly
    the loader bug this backend exists to avoid."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ModelError(f"{source}: RoPE type {rope_type!r} is not supported (only 'default')")
    top, nested = cfg.get("rope_theta"), params.get("rope_theta")
    if top is not None and nested is not None and float(top) != float(nested):
        log.warning("%s: rope_theta=%s and rope_parameters.rope_theta=%s disagree; using %s as "
                    "transformers does", source, top, nested, nested)
    theta = nested if nested is not None else top
    if theta is None:
        raise ModelError(f"{source}: no rope_theta (neither top-level nor under rope_parameters); "
                         "add the model's value (1000000.0 for published Qwen3) to config.json")
    return float(theta)


def checked_batch(batch: Batch, vocab: int,
                  max_positions: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The batch's ids and mask, refused when a model call could not give a true answer:
    mismatched shapes, a row with no real token, ids outside the vocabulary (lookups do not
    bounds-check on every backend), or more positions than the model has."""
    ids, mask = np.asarray(batch.input_ids), np.asarray(batch.attention_mask)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise InvalidInput(f"batch input_ids {ids.shape} and attention_mask {mask.shape} must "
                           "be equal 2-D shapes")
    if ids.size == 0:
        return ids, mask
    if not (mask != 0).any(axis=1).all():
        raise InvalidInput("every batch row needs at least one real token")
    if ids.min() < 0 or ids.max() >= vocab:
        raise InvalidInput(f"token ids must be in [0, {vocab}); got [{ids.min()}, {ids.max()}]")
    if max_positions is not None and ids.shape[1] > max_positions:
        raise InvalidInput(f"{ids.shape[1]} tokens is over this model's {max_positions} positions")
    return ids, mask


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards an index names, or the single file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{index}: unreadable shard index: {e}") from e
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise ModelError(f"{f}: shard listed in {index.name} is missing")
        return files
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir}: no model.safetensors (or shards) found; only safetensors "
                         "weights are supported")
    return files


def normalise_keys(weights: dict[str, T], origin: dict[str, Path],
                   prefix: str) -> tuple[dict[str, T], dict[str, Path]]:
    """Strip the "model." / "bert." prefix, drop heads and buffers, rename gamma/beta."""
    out: dict[str, T] = {}
    out_origin: dict[str, Path] = {}
    for key, value in weights.items():
        name = key.removeprefix(prefix)
        if name.startswith(IGNORED_PREFIXES) or name.endswith(IGNORED_SUFFIXES):
            continue
        # Old BERT checkpoints name LayerNorm parameters gamma / beta.
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        out[name] = value
        out_origin[name] = origin[key]
    return out, out_origin


def check_keys(present: Collection[str], expected: Collection[str], origin: Mapping[str, Path],
               model_dir: Path, *, refused: tuple[str, str] | None = None) -> None:
    """Every expected weight present and nothing unexplained, or ModelError naming the file.

    `refused` is (key suffix, reason): an unexpected key with that suffix is reported first,
    with the reason (the torch backend uses it to name MLX-quantised checkpoints).
    """
    missing = sorted(set(expected) - set(present))
    if missing:
        files = ", ".join(sorted({str(p) for p in origin.values()})) or str(model_dir)
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ModelError(f"{files}: missing weights {', '.join(missing[:5])}{more}")
    unexpected = sorted(set(present) - set(expected))
    if not unexpected:
        return
    if refused is not None:
        suffix, reason = refused
        k = next((k for k in unexpected if k.endswith(suffix)), None)
        if k is not None:
            raise ModelError(f"{origin[k]}: {reason} ({k!r})")
    k = unexpected[0]
    raise ModelError(f"{origin[k]}: unexpected weight {k!r} (and {len(unexpected) - 1} more); "
                     "config.json does not describe these weights")
