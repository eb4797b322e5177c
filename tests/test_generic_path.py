"""The generic path: an embedding architecture with no native forward (a tiny DistilBERT) loads
through transformers, with the same recipe rules, and matches sentence-transformers; on MLX a
tiny XLM-RoBERTa loads through mlx-embeddings and matches too; the native paths never import
transformers or mlx-embeddings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from engines import engine_for
from reference import sentence_transformers_reference

from localrank.config import load_settings
from localrank.engine.load import load_engine
from localrank.engine.names import native_families
from localrank.errors import BackendError

TEXTS = [
    "The cat sat on the mat.",
    "A short one",
    "Passwörter können geändert werden, and a much longer sentence follows it here. " * 4,
]


def test_generic_embedder_matches_sentence_transformers(tiny_generic_embedder):
    engine = engine_for(str(tiny_generic_embedder), "torch", max_tokens=512)
    assert engine.recipe.family == "generic:distilbert"
    assert "distilbert" not in native_families()
    assert engine.info.backend.pooling == "mean" and engine.recipe.normalize
    assert "generic path" in engine.info.backend.dtype_reason
    expected = sentence_transformers_reference(tiny_generic_embedder, TEXTS)
    batched = engine.embed(TEXTS).vectors
    assert np.abs(batched - expected).max() < 1e-4
    one = np.vstack([engine.embed([t]).vectors for t in TEXTS])
    assert np.abs(one - expected).max() < 1e-4


def test_generic_path_on_mlx_matches_sentence_transformers(tiny_xlmr_embedder):
    """XLM-RoBERTa has no native forward; on MLX it runs through mlx-embeddings' model, with the
    engine's recipe (tokenizer, right padding, mean pooling from the mask, normalisation)."""
    engine = engine_for(str(tiny_xlmr_embedder), "mlx", max_tokens=512)
    assert engine.recipe.family == "generic:xlm-roberta"
    backend = engine.info.backend
    assert backend.backend == "mlx" and backend.dtype == "float32"
    assert "mlx-embeddings" in backend.dtype_reason and backend.pooling == "mean"
    expected = sentence_transformers_reference(tiny_xlmr_embedder, TEXTS)
    batched = engine.embed(TEXTS).vectors
    assert np.abs(batched - expected).max() < 1e-4
    one = np.vstack([engine.embed([t]).vectors for t in TEXTS])
    assert np.abs(one - expected).max() < 1e-4
    on_torch = engine_for(str(tiny_xlmr_embedder), "torch", max_tokens=512)
    assert np.abs(on_torch.embed(TEXTS).vectors - batched).max() < 1e-4


def test_generic_path_on_mlx_refuses_what_mlx_embeddings_lacks(tiny_generic_embedder):
    with pytest.raises(BackendError, match="mlx-embeddings has no model for it.*--backend torch"):
        engine_for(str(tiny_generic_embedder), "mlx", max_tokens=512)


def test_generic_path_on_mlx_without_mlx_embeddings_names_the_extra(
    tiny_xlmr_embedder, monkeypatch
):
    monkeypatch.setitem(sys.modules, "mlx_embeddings.utils", None)  # the import now fails
    settings = load_settings(
        {"model": str(tiny_xlmr_embedder), "backend": "mlx", "dtype": "float32"}, environ={}
    )
    with pytest.raises(BackendError, match=r"xlm-roberta .*pip install 'localrank\[mlx-generic\]'"):
        load_engine(settings)


def test_generic_path_on_mlx_refuses_int8(tiny_xlmr_embedder):
    settings = load_settings(
        {"model": str(tiny_xlmr_embedder), "backend": "mlx", "dtype": "int8"}, environ={}
    )
    with pytest.raises(BackendError, match="not 'int8'"):
        load_engine(settings)


def test_generic_path_without_transformers_names_the_extra(tiny_generic_embedder, monkeypatch):
    """A runtime install (no dev extra) may lack transformers: the load fails with the extra to
    install, not an ImportError from deep inside the engine."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    settings = load_settings(
        {"model": str(tiny_generic_embedder), "backend": "torch", "dtype": "float32"}, environ={}
    )
    with pytest.raises(BackendError, match=r"distilbert .*pip install 'localrank\[generic\]'"):
        load_engine(settings)


def test_generic_path_refuses_int8(tiny_generic_embedder):
    """int8 quantises a native forward's matmuls; a transformers model is not one."""
    settings = load_settings(
        {"model": str(tiny_generic_embedder), "backend": "torch", "dtype": "int8"}, environ={}
    )
    with pytest.raises(BackendError, match="int8 needs a native forward"):
        load_engine(settings)


def test_native_paths_do_not_import_transformers(tiny_qwen3):
    code = (
        "import sys\n"
        "from localrank.config import load_settings\n"
        "from localrank.engine.load import load_engine, load_reranker\n"
        f"s = load_settings({{'model': {str(tiny_qwen3)!r}, 'backend': 'torch'}}, environ={{}})\n"
        "load_engine(s).embed(['hello'])\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
        f"s = load_settings({{'model': {str(tiny_qwen3)!r}, 'backend': 'mlx'}}, environ={{}})\n"
        "load_engine(s).embed(['hello'])\n"
        "assert 'mlx_embeddings' not in sys.modules, 'mlx_embeddings was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tiny_qwen3.parents[2]))
