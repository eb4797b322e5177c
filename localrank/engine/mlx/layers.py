"""What the MLX families share: the model contract the embedder relies on, and the mask.

Attention masks are boolean and every query may always attend to itself, so no softmax row is
ever empty and padding cannot poison real rows.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

# A boolean [B, 1, T, T] array, "causal", or None (no mask needed).
Mask = mx.array | str | None


class MLXModel(nn.Module):
    """A family's model: last hidden states [B, T, H] for ids [B, T] under a Mask."""

    causal: bool
    max_positions: int | None  # None: no position table to run off
    # The dtype matmuls run in, set by the embedder once the weights are loaded.
    compute_dtype: mx.Dtype = mx.float32

    def __call__(self, ids: mx.array, mask: Mask) -> mx.array:
        raise NotImplementedError


def attention_mask(real: np.ndarray, *, causal: bool) -> Mask:
    """A boolean [B, 1, T, T] mask (True = may attend), or a cheaper equivalent without padding.

    Each query may always attend to itself, so a padding query (which under a causal mask with
    left padding sees no real key) never gets an empty softmax: finite everywhere, and real
    rows, which already see themselves, are unchanged.
    """
    if real.all():
        return "causal" if causal else None
    t = real.shape[1]
    keys = mx.array(real)[:, None, None, :]
    allowed = keys & mx.array(np.tril(np.ones((t, t), dtype=bool))) if causal else keys
    return allowed | mx.eye(t, dtype=mx.bool_)
