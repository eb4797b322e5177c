"""Every backend on this machine against the authors' recipes (transformers, ST)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engines import MAX_TOKENS, engine_for
from reference import (
    get_detailed_instruct,
    qwen3_reference,
    qwen3_reference_ids,
    sentence_transformers_reference,
)

BACKENDS = ["cpu", "mlx"]  # torch CPU and MLX (mlx[cpu]) both run here; neither is skipped

TEXTS = [
    "a",  # one token
    "What is the capital of France?",
    "Paris is the capital and largest city of France, on the Seine.",
    "Ünïcödé — 日本語のテキスト, emoji 🚀🌍 and Ελληνικά",
    "   \t  \n ",  # whitespace only
    "repeat me",
    "repeat me",
    "word " * 200,  # beyond max tokens: truncated
    "",
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_qwen3_batched_matches_authors_recipe(tiny_qwen3: Path, backend: str) -> None:
    engine = engine_for(str(tiny_qwen3), backend)
    got = engine.embed(TEXTS).vectors
    want = qwen3_reference(tiny_qwen3, TEXTS, max_length=MAX_TOKENS)
    assert np.abs(got - want).max() < 1e-4
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_qwen3_one_at_a_time_matches_batched(tiny_qwen3: Path, backend: str) -> None:
    engine = engine_for(str(tiny_qwen3), backend)
    batched = engine.embed(TEXTS).vectors
    for i, text in enumerate(TEXTS):
        single = engine.embed([text]).vectors[0]
        want = qwen3_reference(tiny_qwen3, [text], max_length=MAX_TOKENS)[0]
        assert np.abs(single - want).max() < 1e-4, text
        assert np.abs(single - batched[i]).max() < 1e-4, text


@pytest.mark.parametrize("backend", BACKENDS)
def test_instructed_queries_match_authors_recipe(tiny_qwen3: Path, backend: str) -> None:
    engine = engine_for(str(tiny_qwen3), backend, 8192)
    task = "Given a web search query, retrieve relevant passages that answer the query"
    queries = ["how tall is the eiffel tower", "best pasta recipe"]
    got = engine.embed(queries, query=True).vectors
    want = qwen3_reference(tiny_qwen3, [get_detailed_instruct(task, q) for q in queries])
    assert np.abs(got - want).max() < 1e-4
    custom = "Given a code question, retrieve code snippets"
    got = engine.embed(queries, query=True, instruction=custom).vectors
    want = qwen3_reference(tiny_qwen3, [get_detailed_instruct(custom, q) for q in queries])
    assert np.abs(got - want).max() < 1e-4
    # Documents carry no instruction, so a query and the same text as a document differ.
    doc = engine.embed(queries).vectors
    assert np.abs(doc - got).max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_tokenizer_without_eos_gets_it_appended(
    tiny_qwen3: Path, tiny_qwen3_raw_tokenizer: Path, backend: str
) -> None:
    raw = engine_for(str(tiny_qwen3_raw_tokenizer), backend)
    ref = engine_for(str(tiny_qwen3), backend)
    assert raw.info.tokenizer_appends_eos is False
    assert ref.info.tokenizer_appends_eos is True
    texts = ["hello world", "a", "word " * 200]
    for enc, want_ids in zip(
        raw.prepare(texts), qwen3_reference_ids(tiny_qwen3, texts, MAX_TOKENS), strict=True
    ):
        assert enc.ids[-1] == 151643
        assert enc.ids == want_ids
    assert np.abs(raw.embed(texts).vectors - ref.embed(texts).vectors).max() < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_minilm_matches_sentence_transformers(minilm: Path, backend: str) -> None:
    engine = engine_for(str(minilm), backend, 8192)
    assert engine.info.recipe.max_tokens == 256  # sentence_bert_config's max_seq_length
    texts = [*TEXTS[:-2], "long " * 400, "The cat sits on the mat."]
    got = engine.embed(texts).vectors
    want = sentence_transformers_reference(minilm, texts)
    assert got.shape == (len(texts), 384)
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_minilm_paraphrase_is_nearer_than_unrelated(minilm: Path, backend: str) -> None:
    engine = engine_for(str(minilm), backend, 8192)
    a, para, other = engine.embed(
        [
            "The weather is lovely today.",
            "It is a beautiful sunny day.",
            "The stock market crashed in 1929.",
        ]
    ).vectors
    assert float(a @ para) > float(a @ other) + 0.2


@pytest.mark.parametrize("backend", BACKENDS)
def test_report_reads_back_what_was_loaded(tiny_qwen3: Path, backend: str) -> None:
    info = engine_for(str(tiny_qwen3), backend).info
    assert info.backend.backend == ("mlx" if backend == "mlx" else "torch")
    assert info.backend.device == "cpu"
    assert info.backend.dtype == "float32"
    assert info.backend.dim == 64
    assert info.backend.pooling == "last_token"
    assert info.backend.max_tokens == MAX_TOKENS
