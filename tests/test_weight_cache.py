"""Weights cast at load are kept on disk once the daemon serves, and the next start maps them
instead of casting again: the same vectors, nothing cast, and a changed checkpoint is never
served from a stale cache."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from localrank.config import load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine

TEXTS = ["Paris is the capital of France.", "a", "def f(x):\n    return x * 2\n" * 5]


def engine(model: Path, home: Path, dtype: str) -> Engine:
    settings = {"model": str(model), "backend": "cpu", "dtype": dtype, "home": str(home)}
    return load_engine(load_settings(settings, environ={}))


def cache_files(home: Path) -> list[Path]:
    return sorted((home / "cache" / "weights").glob("*.safetensors"))


@pytest.fixture
def model(tiny_qwen3: Path, tmp_path: Path) -> Path:
    """A copy of the tiny Qwen3 (stored in float32), so a test can change its files."""
    return Path(shutil.copytree(tiny_qwen3, tmp_path / "model"))


def test_cast_weights_are_cached_and_mapped_by_the_next_start(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    first = engine(model, home, "bfloat16")  # float32 checkpoint, bfloat16 compute: a cast
    assert cache_files(home) == []  # not at load: once serving
    want = first.embed(TEXTS).vectors
    want_q = first.embed(TEXTS, query=True).vectors
    first.optimize()
    [cached] = cache_files(home)
    assert cached.name.endswith("-bfloat16.safetensors")

    caplog.set_level(logging.INFO, logger="localrank.engine.torch.embedder")
    second = engine(model, home, "bfloat16")
    assert "cast weights mapped from" in caplog.text
    # Every cast matmul weight of the second start is the cache's: mapped, in the compute dtype.
    linears = second.embedder.model.linears()
    assert all(str(lin.weight.dtype) == "torch.bfloat16" for lin in linears)
    got = second.embed(TEXTS).vectors
    got_q = second.embed(TEXTS, query=True).vectors
    # Unstacked projections sum in another order than stacked ones: bfloat16 rounding apart.
    assert (got * want).sum(axis=1).min() > 0.99999
    assert (got_q * want_q).sum(axis=1).min() > 0.99999
    second.optimize()
    assert cache_files(home) == [cached]  # not written again


def test_a_changed_checkpoint_is_cast_again_not_served_from_the_cache(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    engine(model, home, "bfloat16").optimize()
    [cached] = cache_files(home)
    before = cached.stat().st_mtime_ns
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    caplog.set_level(logging.INFO, logger="localrank.engine.torch.embedder")
    again = engine(model, home, "bfloat16")
    assert "cast weights mapped from" not in caplog.text
    again.optimize()  # rewritten for the checkpoint as it is now
    assert cache_files(home) == [cached] and cached.stat().st_mtime_ns != before


def test_nothing_is_cached_when_nothing_is_cast(model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    e = engine(model, home, "float32")  # float32 checkpoint, float32 compute
    e.optimize()
    assert cache_files(home) == []
    assert np.isfinite(e.embed(TEXTS).vectors).all()


def test_closing_stops_the_background_work_before_it_writes(model: Path, tmp_path: Path) -> None:
    """SIGTERM while optimize waits for a gap: it ends at its next step, writing nothing."""
    home = tmp_path / "home"
    e = engine(model, home, "bfloat16")
    result: list[int] = []
    with e.embedder._forwards.running():  # a forward pass in progress: optimize waits
        worker = threading.Thread(target=lambda: result.append(e.optimize()))
        worker.start()
        time.sleep(0.2)
        e.stop_optimizing()
    worker.join(10)
    assert result == [0] and not worker.is_alive()
    assert cache_files(home) == [] and e.cached_prefix_tokens == 0
