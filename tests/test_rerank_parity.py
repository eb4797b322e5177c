"""Cross-encoder scores against the authors' recipes (the Qwen3-Reranker README's transformers
code; sentence-transformers' CrossEncoder), within 1e-4: batched and one pair at a time, long
documents truncated as the authors truncate, on torch CPU (and MLX where the family has it)."""

from __future__ import annotations

import numpy as np
import pytest
from engines import reranker_for
from reference import cross_encoder_reference, qwen3_reranker_reference

from localrank.engine.rerank import sigmoid

QUERY = "how do I reset my password"
DOCS = [
    "To reset a forgotten password, open the sign-in page and choose Forgot password.",
    "The quarterly report shows revenue grew by twelve percent.",
    "Passwörter können in den Einstellungen geändert werden. 日本語のテキストも。",
    "x",
    "Reset links expire after one hour; ask an administrator if none arrives. " * 3,
]
LONG = "The password reset flow sends an email with a link. " * 400  # ~4,000 tokens
TOL = 1e-4


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_qwen3_reranker_matches_the_readme_code(tiny_reranker, backend):
    rr = reranker_for(str(tiny_reranker), backend)
    assert rr.info.backend.backend == backend
    pairs = [(QUERY, d) for d in DOCS]
    expected = qwen3_reranker_reference(tiny_reranker, pairs)
    batched = rr.rerank(QUERY, DOCS)
    assert np.abs(batched.scores - expected).max() < TOL
    one_by_one = np.array([rr.rerank(QUERY, [d]).scores[0] for d in DOCS])
    assert np.abs(one_by_one - expected).max() < TOL
    # The scores are not all alike (a broken template or head would flatten them).
    assert np.ptp(expected) > 1e-3


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_qwen3_reranker_custom_instruction_and_truncation(tiny_reranker, backend):
    rr = reranker_for(str(tiny_reranker), backend, max_tokens=256)
    task = "Given a question, find the passage that answers it"
    docs = [LONG, DOCS[0]]
    expected = qwen3_reranker_reference(
        tiny_reranker, [(QUERY, d) for d in docs], instruction=task, max_length=256
    )
    got = rr.rerank(QUERY, docs, instruction=task)
    assert np.abs(got.scores - expected).max() < TOL
    assert got.truncated == 1
    encoded = rr.prepare(QUERY, docs, instruction=task)
    assert len(encoded[0].ids) == 256  # prefix + cut body + suffix fills the max length exactly
    assert encoded[0].ids[-len(rr.recipe.suffix_ids) :] == list(rr.recipe.suffix_ids)
    # The instruction is really used: the default one scores differently.
    default = rr.rerank(QUERY, docs)
    assert np.abs(default.scores - got.scores).max() > 1e-6


def test_qwen3_reranker_yes_no_ids_come_from_the_tokenizer(tiny_reranker):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_reranker))
    recipe = reranker_for(str(tiny_reranker), "torch").recipe
    assert recipe.yes_id == tok.convert_tokens_to_ids("yes")
    assert recipe.no_id == tok.convert_tokens_to_ids("no")


def assert_matches_cross_encoder(rr, folder) -> None:  # type: ignore[no-untyped-def]
    """Logits and scores as sentence-transformers' CrossEncoder gives them, batched and one by
    one; the long document cut longest-first to the max length, as the tokenizer does."""
    docs = [*DOCS, LONG]
    pairs = [(QUERY, d) for d in docs]
    raw = cross_encoder_reference(folder, pairs, activation=False)
    expected = cross_encoder_reference(folder, pairs)
    got = rr.rerank(QUERY, docs)
    assert np.abs(got.logits - raw).max() < TOL
    assert np.abs(got.scores - expected).max() < TOL
    assert got.truncated == 1
    one_by_one = np.array([rr.rerank(QUERY, [d]).logits[0] for d in docs])
    assert np.abs(one_by_one - raw).max() < TOL
    assert np.ptp(raw) > 1e-3


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_bert_cross_encoder_matches_sentence_transformers(tiny_cross_encoder, backend):
    rr = reranker_for(str(tiny_cross_encoder), backend)
    assert rr.info.backend.backend == backend
    assert_matches_cross_encoder(rr, tiny_cross_encoder)


def test_bert_cross_encoder_in_bfloat16_stays_close(tiny_cross_encoder):
    """bfloat16 matmuls (LayerNorm, GELU and the head in float32), as "auto" picks on a CPU with
    native bfloat16: scores close to CrossEncoder's float32 ones."""
    rr = reranker_for(str(tiny_cross_encoder), "torch", dtype="bfloat16")
    assert rr.info.backend.dtype == "bfloat16"
    docs = DOCS[:-1]
    expected = cross_encoder_reference(tiny_cross_encoder, [(QUERY, d) for d in docs])
    got = rr.rerank(QUERY, docs).scores
    assert np.abs(got - expected).max() < 5e-3
    assert np.abs(got - expected).max() > 1e-7  # bfloat16 really ran


def test_sigmoid_is_stable_at_the_extremes():
    out = sigmoid(np.array([-1e4, 0.0, 1e4]))
    assert out.tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_xlmr_cross_encoder_matches_sentence_transformers(tiny_xlmr_cross_encoder, backend):
    rr = reranker_for(str(tiny_xlmr_cross_encoder), backend)
    assert rr.info.backend.backend == backend and rr.recipe.family == "xlm-roberta"
    assert_matches_cross_encoder(rr, tiny_xlmr_cross_encoder)


def test_a_reranker_folder_without_its_tokenizer_is_refused(tiny_cross_encoder, tmp_path):
    import shutil

    from localrank.errors import ModelError

    broken = tmp_path / "ce"
    shutil.copytree(tiny_cross_encoder, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="tokenizer.json"):
        reranker_for(str(broken), "torch")


def test_an_embedding_model_is_not_a_reranker(minilm):
    from localrank.errors import ModelError

    with pytest.raises(ModelError, match="not a supported reranker"):
        reranker_for(str(minilm), "torch")


def test_reranker_names_resolve_and_never_fall_back():
    from localrank.config import load_settings
    from localrank.engine.load import load_reranker
    from localrank.engine.names import canonical_reranker_name
    from localrank.errors import ModelError

    assert canonical_reranker_name("qwen3-reranker-0.6b") == "Qwen/Qwen3-Reranker-0.6B"
    assert canonical_reranker_name("BGE-reranker-v2-m3") == "BAAI/bge-reranker-v2-m3"
    # Not on this machine, and the hub (a dead loopback port in the tests) cannot be reached:
    # an error naming the model, never another model in its place.
    settings = load_settings({"reranker": "bge-reranker-base", "backend": "torch"}, environ={})
    with pytest.raises(ModelError, match="BAAI/bge-reranker-base"):
        load_reranker(settings)
