"""Engines loaded once per test session and shared by the test modules that need them."""

from __future__ import annotations

from functools import cache

from localrank.config import load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine, load_reranker
from localrank.engine.rerank import CrossEncoder

MAX_TOKENS = 48  # small, so truncation is exercised by ordinary test texts


@cache
def engine_for(model: str, backend: str, max_tokens: int = MAX_TOKENS) -> Engine:
    """The engine for a model folder on a backend, float32 (parity tests compare to float32)."""
    return load_engine(
        load_settings(
            {"model": model, "backend": backend, "max_tokens": max_tokens, "dtype": "float32"},
            environ={},
        )
    )


@cache
def reranker_for(
    model: str, backend: str, max_tokens: int = 8192, dtype: str = "float32"
) -> CrossEncoder:
    """The reranker for a model folder on a backend, float32 unless asked."""
    return load_reranker(
        load_settings(
            {"reranker": model, "backend": backend, "max_tokens": max_tokens, "dtype": dtype},
            environ={},
        )
    )
