"""Framework-free rules both backends share: checkpoint config values and batch validation.

Kept free of torch and mlx imports so each backend can use it without importing the other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from localrank.engine.types import Batch
from localrank.errors import InvalidInput, ModelError

log = logging.getLogger(__name__)


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
