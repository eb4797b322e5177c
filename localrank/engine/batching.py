"""Length-sorted, token-budget batches with few distinct padded shapes, and the batch checks
every backend makes before a model call.

Sorting by length keeps padding low on mixed-length input (the reason fixed-size batches in
input order waste compute); bucketing padded lengths keeps the number of distinct shapes small,
which matters on MPS and MLX where memory and compiled kernels are kept per shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from localrank.engine.types import Batch
from localrank.errors import InvalidInput


def bucket_length(n: int) -> int:
    """Round a padded length up to a bucket: multiples of 8 up to 64, then 32, then 128."""
    if n <= 64:
        step = 8
    elif n <= 512:
        step = 32
    else:
        step = 128
    return max(step, -(-n // step) * step)


def bucket_rows(n: int) -> int:
    """Round a count of packed tokens up to one of few sizes: multiples of 8 up to 256, then 16
    steps per doubling (at most 1/16 more rows).

    oneDNN (GELU in float32, every matmul in bfloat16 on CPU) JIT-compiles and caches a kernel
    per shape; with one shape per distinct token count its cache churns and the long-lived
    kernels it keeps fragment the heap, which grew the daemon's RSS without bound (measured:
    bench/soak). A few hundred sizes fit in the cache and are compiled once.
    """
    step = max(8, 1 << max(0, n.bit_length() - 5))
    return max(step, -(-n // step) * step)


def plan_batches(
    lengths: Sequence[int], *, max_batch_tokens: int, max_batch_size: int, bucket: bool = True
) -> list[list[int]]:
    """Group input indices into batches whose padded size stays within the token budget.

    Longest first, so the largest allocation happens at once rather than late in a job.
    A single input longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        n = bucket_length(lengths[i]) if bucket else lengths[i]
        new_width = max(width, n)
        if current and (
            new_width * (len(current) + 1) > max_batch_tokens or len(current) >= max_batch_size
        ):
            batches.append(current)
            current, new_width = [], n
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches


def pad(
    sequences: Sequence[Sequence[int]], *, pad_id: int, side: str, bucket: bool = True
) -> Batch:
    """Pad id sequences into a Batch on the given side, with a 1/0 attention mask."""
    longest = max(len(s) for s in sequences)
    width = bucket_length(longest) if bucket else longest
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if side == "left":
            ids[row, width - n :] = seq
            mask[row, width - n :] = 1
        else:
            ids[row, :n] = seq
            mask[row, :n] = 1
    return Batch(ids, mask)


def checked_batch(
    batch: Batch, vocab: int, max_positions: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The batch's ids and mask, refused when a model call could not give a true answer:
    mismatched shapes, a row with no real token, ids outside the vocabulary (lookups do not
    bounds-check on every backend), or more positions than the model has."""
    ids, mask = np.asarray(batch.input_ids), np.asarray(batch.attention_mask)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise InvalidInput(
            f"batch input_ids {ids.shape} and attention_mask {mask.shape} must be equal 2-D shapes"
        )
    if ids.size == 0:
        return ids, mask
    if not (mask != 0).any(axis=1).all():
        raise InvalidInput("every batch row needs at least one real token")
    if ids.min() < 0 or ids.max() >= vocab:
        raise InvalidInput(f"token ids must be in [0, {vocab}); got [{ids.min()}, {ids.max()}]")
    if max_positions is not None and ids.shape[1] > max_positions:
        raise InvalidInput(f"{ids.shape[1]} tokens is over this model's {max_positions} positions")
    return ids, mask
