"""Few distinct shapes reach the kernels that are compiled and cached per shape.

The daemon's RSS grew by ~330 MB per 1,000 requests of random lengths: oneDNN compiles and caches
a kernel per shape (GELU in float32, every matmul in bfloat16 on CPU), and with packed real
tokens every batch had a new row count, so its cache churned and the kernels it kept fragmented
the heap (bench/soak measures the daemon; these tests check the mechanism)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from engines import engine_for
from reference import sentence_transformers_reference

from localrank.engine.batching import bucket_rows
from localrank.engine.torch.layers import Packing


def test_bucket_rows_few_sizes_little_waste() -> None:
    sizes = {bucket_rows(n) for n in range(1, 32_769)}
    assert len(sizes) <= 150
    for n in range(1, 32_769):
        b = bucket_rows(n)
        assert b >= n
        assert b - n < max(8, n / 16)  # at most 1/16 more rows (8 for small counts)


def test_packing_gathers_buckets_and_scatters_back() -> None:
    b, t, d = 3, 11, 4
    real = torch.zeros(b, t, dtype=torch.bool)
    real[0, :11], real[1, 6:], real[2, :2] = True, True, True  # 18 real tokens
    x = torch.randn(b, t, d)
    for mask in (real, None):
        packing = Packing(mask, b, t)
        packed = packing.gather(x)
        n = int(real.sum()) if mask is not None else b * t
        assert packed.shape == (bucket_rows(n), d)
        back = packing.scatter(packed)
        keep = real if mask is not None else torch.ones(b, t, dtype=torch.bool)
        assert torch.equal(back[keep], x[keep])
        assert not back[~keep].any()


def test_minilm_activations_see_bucketed_rows_and_stay_exact(minilm: Path) -> None:
    """Every GELU call sees a bucketed row count, and vectors still match sentence-transformers."""
    engine = engine_for(str(minilm), "cpu", 256)
    model = engine.embedder.model  # type: ignore[attr-defined]
    seen: list[int] = []
    act = model.act

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(int(x.shape[0]))
        return act(x)

    model.act = spy
    rng = random.Random(0)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
    ]
    try:
        texts = [" ".join(rng.choices(words, k=rng.randint(1, 120))) for _ in range(40)]
        batches = [texts[i : i + rng.randint(1, 6)] for i in range(0, 40, 4)]
        got = [engine.embed(batch).vectors for batch in batches]
    finally:
        model.act = act
    assert seen and all(n == bucket_rows(n) for n in seen)
    for batch, vectors in zip(batches, got, strict=True):
        want = sentence_transformers_reference(minilm, batch)
        assert np.abs(vectors - want).max() < 1e-5
