"""bfloat16 against the model authors' recipe run exactly (float32), per vector, for documents and
queries, on torch CPU and on MLX: within cosine 0.999, and no further from float32 than the
authors' own recipe run in bfloat16 is (norms, softmax, the residual stream and pooling stay
float32 here; transformers rounds the residual stream to bfloat16 after every layer).

And the real dtype decision on this machine: `auto` picks bfloat16 exactly when the CPU has a
native bf16 feature, and says why (bench/bf16_accuracy.py measures the 0.6B shape).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from precision_texts import DOCUMENTS, QUERIES, cosine, qwen3_kind
from reference import get_detailed_instruct, qwen3_reference, sentence_transformers_reference

from localrank.config import DEFAULT_INSTRUCTION, load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine
from localrank.engine.machine import read_cpu_features
from localrank.engine.torch.cpu import linears_supported, prepack

BACKENDS = ["cpu", "mlx"]


def engine(model: Path, backend: str, dtype: str) -> Engine:
    return load_engine(
        load_settings({"model": str(model), "backend": backend, "dtype": dtype}, environ={})
    )


@pytest.fixture(scope="module", params=BACKENDS)
def bf16_engine(request: pytest.FixtureRequest, tiny_qwen3: Path) -> Engine:
    e = engine(tiny_qwen3, request.param, "bfloat16")
    assert e.info.backend.dtype == "bfloat16"
    assert e.info.backend.dtype_reason == "set by --dtype"
    return e


@pytest.mark.parametrize("kind", ["documents", "queries"])
def test_bf16_within_0999_and_closer_than_the_authors_bf16(
    tiny_qwen3: Path, bf16_engine: Engine, kind: str
) -> None:
    got, texts = qwen3_kind(bf16_engine, kind)
    exact = qwen3_reference(tiny_qwen3, texts)
    authors_bf16 = qwen3_reference(tiny_qwen3, texts, dtype=torch.bfloat16)
    ours = cosine(got, exact)
    theirs = cosine(authors_bf16, exact)
    assert ours.min() >= 0.999, ours
    # No further from float32 than the authors' recipe in bfloat16: the worst vector, and on
    # average (1 - cosine), with a hair of slack for vectors both get essentially exact.
    assert ours.min() >= theirs.min() - 1e-6, (ours, theirs)
    assert (1 - ours).mean() <= (1 - theirs).mean() + 1e-6, (ours, theirs)
    # bfloat16 really ran: the vectors are not bit-identical to float32's.
    assert np.abs(got - exact).max() > 1e-6


@pytest.mark.parametrize("kind", ["documents", "queries"])
def test_bert_bf16_within_0999_of_the_recipe_on_real_weights(minilm: Path, kind: str) -> None:
    """all-MiniLM-L6-v2's real weights in bfloat16 (matmuls only), against sentence-transformers
    in float32: within cosine 0.999, and no further than sentence-transformers' own bfloat16."""
    from sentence_transformers import SentenceTransformer

    texts = DOCUMENTS if kind == "documents" else QUERIES
    got = engine(minilm, "cpu", "bfloat16").embed(texts).vectors
    exact = sentence_transformers_reference(minilm, texts)
    st = SentenceTransformer(str(minilm), device="cpu")  # its own: the reference's stays float32
    theirs = cosine(
        np.asarray(st.to(torch.bfloat16).encode(texts, normalize_embeddings=True)), exact
    )
    ours = cosine(got, exact)
    assert ours.min() >= 0.999, ours
    assert ours.min() >= theirs.min() - 1e-6 and (1 - ours).mean() <= (1 - theirs).mean() + 1e-6
    assert np.abs(got - exact).max() > 1e-6  # bfloat16 really ran


def test_bf16_batched_equals_one_at_a_time_closely(bf16_engine: Engine) -> None:
    batched = bf16_engine.embed(DOCUMENTS).vectors
    singles = np.concatenate([bf16_engine.embed([t]).vectors for t in DOCUMENTS])
    assert cosine(batched, singles).min() > 0.9995


def test_auto_dtype_on_this_cpu(tiny_qwen3: Path, minilm: Path) -> None:
    """The real path: /proc/cpuinfo and real probe matmuls decide, and the reason names what
    decided it: a native bf16 feature -> bfloat16 exactly when the probe found it faster (a CPU
    can list the feature and still run bfloat16 slowly, e.g. when torch's kernels are limited
    to AVX2 with ATEN_CPU_CAPABILITY); otherwise Qwen3, whose family offers int8, -> int8
    exactly when its probe found int8 faster and the load's check kept it, and BERT -> float32.
    BERT's forward keeps LayerNorm, GELU, softmax and the residual stream in float32 too: the
    same bfloat16 rule picks its dtype."""
    feature = read_cpu_features().native_bf16()
    for model, offers_int8 in ((tiny_qwen3, True), (minilm, False)):
        e = engine(model, "cpu", "auto")
        backend = e.info.backend
        reason = backend.dtype_reason
        bf16 = feature is not None and "faster than float32" in reason.split(";")[0]
        if feature is None:
            assert "no native bfloat16" in reason
        else:
            assert feature in reason
            assert bf16 or "probe matmul in bfloat16 was only" in reason
        if bf16:
            want = "bfloat16"
        elif not offers_int8:
            want = "float32"
        else:
            int8_kept = "int8 weights ran" in reason and "came within cosine" not in reason
            assert int8_kept or "int8 was only" in reason or "came within cosine" in reason
            want = "int8" if int8_kept else "float32"
        assert backend.dtype == want, reason
        assert backend.threads >= 1
        assert e.info.to_dict()["dtype_reason"] == reason


def test_repacked_weights_compute_the_same(tiny_qwen3: Path) -> None:
    """Engine.optimize (the daemon runs it once serving) repacks the bfloat16 CPU weights for
    oneDNN where this torch's oneDNN computes bfloat16 (not on an AVX2-only x86: there it packs
    nothing); the vectors stay those of the plain path, prefix path included, either way."""
    e = engine(tiny_qwen3, "cpu", "bfloat16")
    queries = [*QUERIES, "x"]
    assert e.cache_query_prefix() > 10  # the part of optimize that is not repacking
    before_docs = e.embed(DOCUMENTS).vectors
    before_queries = e.embed(queries, query=True).vectors
    # 2 layers x (qkv, o, gate_up, down): a float32 checkpoint cast to bf16 is stacked.
    assert e.optimize() == (2 * 4 if linears_supported() else 0)
    linears = e.embedder.model.linears()
    assert all((lin.packed is not None) == linears_supported() for lin in linears)
    after_docs = e.embed(DOCUMENTS).vectors
    after_queries = e.embed(queries, query=True).vectors
    assert cosine(before_docs, after_docs).min() > 0.99999
    assert cosine(before_queries, after_queries).min() > 0.99999
    assert e.optimize() == 0  # once is enough


def test_repacking_waits_while_a_forward_pass_runs(tiny_qwen3: Path) -> None:
    """The daemon repacks in the background while it serves: no weight is repacked while a
    request's forward pass is running, so requests never share the cores with the repacking.
    (The packing itself is a stand-in here: the waiting is what is tested, on any CPU.)"""
    e = engine(tiny_qwen3, "cpu", "bfloat16")
    embedder = e.embedder
    linears = embedder.model.linears()
    done = threading.Event()
    released: list[torch.Tensor] = []

    def run() -> None:
        prepack(linears, released.append, embedder._forwards.wait_idle, pack=torch.clone)
        done.set()

    with embedder._forwards.running():  # a forward pass in progress
        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(0.3)
        assert all(lin.packed is None for lin in linears)  # waiting for a gap
        assert not released
    worker.join(30)
    assert done.is_set() and all(lin.packed is not None for lin in linears)
    assert len(released) == len(linears)


def test_the_query_prefix_is_computed_once_and_changes_nothing(tiny_qwen3: Path) -> None:
    """Queries with the default instruction share ~18 leading tokens; the torch backend caches
    their keys and values. Exact to float32 rounding against the full forward, and against the
    authors' recipe."""
    e = engine(tiny_qwen3, "cpu", "float32")
    assert e.cached_prefix_tokens == 0  # cached once serving (optimize), not at load
    e.optimize()
    assert e.cached_prefix_tokens > 10
    queries = [*QUERIES, ":starts with a colon", "日本語の質問", "x"]
    cached = e.embed(queries, query=True).vectors
    exact = qwen3_reference(
        tiny_qwen3, [get_detailed_instruct(DEFAULT_INSTRUCTION, q) for q in queries]
    )
    assert np.abs(cached - exact).max() < 1e-4
    # A custom instruction does not start with the cached prefix: the full forward, still right.
    task = "Find the definition"
    custom = e.embed(queries, query=True, instruction=task).vectors
    want = qwen3_reference(tiny_qwen3, [get_detailed_instruct(task, q) for q in queries])
    assert np.abs(custom - want).max() < 1e-4
    # A batch mixing queries and documents splits between the two paths and keeps its order.
    mixed = e.embed([DOCUMENTS[0], e.format_query(QUERIES[0], None), DOCUMENTS[2]]).vectors
    np.testing.assert_allclose(mixed[1], cached[0], atol=1e-5)
    np.testing.assert_allclose(mixed[0], e.embed([DOCUMENTS[0]]).vectors[0], atol=1e-5)


def test_repacking_stacks_a_bf16_checkpoints_projections(tiny_qwen3: Path, tmp_path: Path) -> None:
    """A checkpoint stored in bfloat16 is served from its mapped weights, q/k/v and gate/up as
    separate matmuls; the background repack stacks each group into one packed weight (one
    parallel region instead of three), releasing the originals, and computes the same vectors.
    Where oneDNN has no bfloat16 kernels (AVX2-only x86) nothing is repacked or stacked."""
    from backend_inputs import copy_model
    from safetensors.torch import load_file

    weights = load_file(tiny_qwen3 / "model.safetensors")
    bf16 = copy_model(
        tiny_qwen3,
        tmp_path / "bf16",
        weights={k: v.to(torch.bfloat16) for k, v in weights.items()},
        torch_dtype="bfloat16",
    )
    # The stacking itself, with a stand-in for oneDNN's reorder (on any CPU).
    model = engine(bf16, "cpu", "bfloat16").embedder.model
    assert [len(p.linears) for p in model.projections()] == [3, 2] * 2  # mapped, unstacked
    released: list[torch.Tensor] = []
    n = prepack(model.linears(), released.append, pack=torch.clone, stacks=model.projections())
    # 2 layers x (qkv stacked, o, gate_up stacked, down); every original weight released.
    assert n == 2 * 4 and len(released) == 2 * 7
    assert [len(p.linears) for p in model.projections()] == [1, 1] * 2
    assert all(lin.packed is not None for lin in model.linears())

    # The daemon's repack, with oneDNN's own layout where this CPU has one.
    e = engine(bf16, "cpu", "bfloat16")
    queries = [*QUERIES, "x"]
    assert e.cache_query_prefix() > 10
    before = e.embed([*DOCUMENTS, *queries[:2]]).vectors, e.embed(queries, query=True).vectors
    assert e.optimize() == (2 * 4 if linears_supported() else 0)
    stacked = [len(p.linears) for p in e.embedder.model.projections()]
    assert stacked == ([1, 1] * 2 if linears_supported() else [3, 2] * 2)
    after = e.embed([*DOCUMENTS, *queries[:2]]).vectors, e.embed(queries, query=True).vectors
    for b, a in zip(before, after, strict=True):
        assert cosine(b, a).min() > 0.99999
