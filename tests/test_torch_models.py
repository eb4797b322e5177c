"""The torch backend's own forwards (engine/torch/) against transformers / sentence-transformers,
both attention paths, the traps (left-padding NaN, rope_theta), dtypes, load errors, and that
transformers is never imported at runtime.

Batches are built here by hand from `tokenizers`, so that nothing but the backend is under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from backend_inputs import EOS, MINILM, QWEN3, copy_model, pad, unit
from reference import qwen3_reference, sentence_transformers_reference
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from localrank.engine.torch import TorchEmbedder, default_dtype, pool
from localrank.engine.torch import layers as torch_layers
from localrank.engine.torch.cpu import configure_threads
from localrank.engine.torch.layers import attention_mask
from localrank.engine.torch.qwen3 import Qwen3, joined
from localrank.engine.torch.weights import MappedCheckpoint
from localrank.engine.types import Batch
from localrank.errors import BackendError, InvalidInput, ModelError

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "",  # the appended <|endoftext|> alone: a one-token input
    "a",
    "What is the capital of France?",
    "Paris is the capital and largest city of France, on the Seine. " * 4,
    "Ünïcödé — 日本語のテキスト, emoji 🚀🌍 and Ελληνικά",
    "repeat me",
    "repeat me",
]


def qwen3_batch(model_dir: Path, texts: list[str], side: str = "left") -> Batch:
    # The tiny model's tokenizer.json appends <|endoftext|> itself.
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rows = [tok.encode(t).ids for t in texts]
    assert all(r[-1] == EOS for r in rows)
    return pad(rows, side, EOS)


def minilm_batch(model_dir: Path, texts: list[str]) -> Batch:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    return pad([tok.encode(t).ids for t in texts], "right", 0)


@pytest.fixture(scope="module")
def qwen3_sdpa(tiny_qwen3: Path) -> TorchEmbedder:
    return TorchEmbedder(tiny_qwen3, QWEN3, attention="sdpa", dtype="float32")


@pytest.fixture(scope="module")
def qwen3_explicit(tiny_qwen3: Path) -> TorchEmbedder:
    return TorchEmbedder(tiny_qwen3, QWEN3, attention="explicit", dtype="float32")


@pytest.fixture(scope="module")
def qwen3_ref(tiny_qwen3: Path) -> np.ndarray:
    return qwen3_reference(tiny_qwen3, TEXTS)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_qwen3_matches_transformers(
    tiny_qwen3: Path, qwen3_ref: np.ndarray, attention: str, request: pytest.FixtureRequest
) -> None:
    emb: TorchEmbedder = request.getfixturevalue(f"qwen3_{attention}")
    assert (emb.info.backend, emb.info.device, emb.info.dtype, emb.info.dim) == (
        "torch",
        "cpu",
        "float32",
        64,
    )
    got = emb.embed(qwen3_batch(tiny_qwen3, TEXTS))
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 64)
    assert np.abs(unit(got) - qwen3_ref).max() < 1e-4
    np.testing.assert_array_equal(got[5], got[6])
    singles = np.concatenate([emb.embed(qwen3_batch(tiny_qwen3, [t])) for t in TEXTS])
    assert np.abs(unit(singles) - qwen3_ref).max() < 1e-4
    # Causal attention: the last real token's state does not depend on the padding side.
    right = emb.embed(qwen3_batch(tiny_qwen3, TEXTS, "right"))
    assert np.abs(unit(right) - qwen3_ref).max() < 1e-4


def test_explicit_attention_equals_sdpa(
    tiny_qwen3: Path,
    minilm: Path,
    qwen3_sdpa: TorchEmbedder,
    qwen3_explicit: TorchEmbedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = qwen3_batch(tiny_qwen3, TEXTS)
    assert np.abs(qwen3_sdpa.embed(batch) - qwen3_explicit.embed(batch)).max() < 1e-5
    # torch < 2.5 has no SDPA enable_gqa: k/v heads are repeated instead, same numbers.
    monkeypatch.setattr(torch_layers, "_SDPA_GQA", False)
    assert np.abs(qwen3_sdpa.embed(batch) - qwen3_explicit.embed(batch)).max() < 1e-5
    monkeypatch.undo()
    unpadded = qwen3_batch(tiny_qwen3, ["abc", "xyz"])  # equal lengths: the mask-free path
    assert unpadded.attention_mask.all()
    assert np.abs(qwen3_sdpa.embed(unpadded) - qwen3_explicit.embed(unpadded)).max() < 1e-5
    mb = minilm_batch(minilm, TEXTS)
    a = TorchEmbedder(minilm, MINILM, dtype="float32", attention="sdpa").embed(mb)
    b = TorchEmbedder(minilm, MINILM, dtype="float32", attention="explicit").embed(mb)
    assert np.abs(a - b).max() < 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_minilm_matches_sentence_transformers(minilm: Path, attention: str) -> None:
    emb = TorchEmbedder(minilm, MINILM, dtype="float32", attention=attention)
    assert (emb.info.dim, emb.info.pooling, emb.info.max_tokens) == (384, "mean", 256)
    got = unit(emb.embed(minilm_batch(minilm, TEXTS)))
    want = sentence_transformers_reference(minilm, TEXTS)
    assert np.abs(got - want).max() < 1e-5
    assert got[2] @ got[3] > got[2] @ got[1]  # France questions nearer each other than "a"


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_left_padded_rows_are_finite_everywhere(
    tiny_qwen3: Path, attention: str, request: pytest.FixtureRequest
) -> None:
    # Padding queries under a causal mask with left padding see no real key: unless they may
    # attend to themselves, their softmax row is empty (NaN) and NaN spreads through 0 * NaN.
    emb: TorchEmbedder = request.getfixturevalue(f"qwen3_{attention}")
    batch = qwen3_batch(tiny_qwen3, ["", "a much longer input than the first one, by far"])
    real = torch.from_numpy(batch.attention_mask != 0)
    assert not real[0, 0]
    assert emb.model is not None
    with torch.inference_mode():
        hidden = emb.model.forward(torch.from_numpy(batch.input_ids), real, explicit=emb.explicit)
    assert torch.isfinite(hidden).all()
    mask = attention_mask(real, causal=True)
    assert mask.any(dim=-1).all()  # no empty row anywhere
    # Attention itself is finite at padding positions too (the forward drops them afterwards).
    q, k, v = torch.randn(3, 2, 4, real.shape[1], 16).unbind(0)
    out = torch_layers.attend(q, k, v, mask, causal=True, explicit=attention == "explicit")
    assert torch.isfinite(out).all()


def test_rope_theta_is_read_from_rope_parameters(
    tiny_qwen3: Path, tmp_path: Path, qwen3_sdpa: TorchEmbedder
) -> None:
    cfg = json.loads((tiny_qwen3 / "config.json").read_text())
    assert "rope_theta" not in cfg and cfg["rope_parameters"]["rope_theta"] == 10000.0
    other = copy_model(
        tiny_qwen3,
        tmp_path / "theta",
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    texts = TEXTS[2:5]
    batch = qwen3_batch(tiny_qwen3, texts)
    base = unit(qwen3_sdpa.embed(batch))
    changed = unit(TorchEmbedder(other, QWEN3, dtype="float32").embed(batch))
    assert np.abs(base - changed).max() > 1e-3  # theta really matters for these inputs
    assert np.abs(changed - qwen3_reference(other, texts)).max() < 1e-4


# ----------------------------------------------------------------------------- dtypes


def test_bf16_checkpoint_is_cast_at_load(
    tiny_qwen3: Path, tmp_path: Path, qwen3_ref: np.ndarray
) -> None:
    bf16 = {k: v.to(torch.bfloat16) for k, v in load_file(tiny_qwen3 / "model.safetensors").items()}
    d = copy_model(tiny_qwen3, tmp_path / "bf16", weights=bf16, torch_dtype="bfloat16")
    emb = TorchEmbedder(d, QWEN3, dtype="float32")
    assert emb.info.dtype == "float32"
    got = unit(emb.embed(qwen3_batch(tiny_qwen3, TEXTS)))
    # transformers loading the same bf16 file in float32 computes exactly what we do...
    assert np.abs(got - qwen3_reference(d, TEXTS)).max() < 1e-4
    # ...and rounding the weights to bf16 moved the vectors only a little.
    assert (got * qwen3_ref).sum(axis=1).min() > 0.99
    half = TorchEmbedder(d, QWEN3, dtype="bfloat16")
    assert half.info.dtype == "bfloat16"
    assert (unit(half.embed(qwen3_batch(tiny_qwen3, TEXTS))) * qwen3_ref).sum(axis=1).min() > 0.98


def test_sharded_checkpoint(tiny_qwen3: Path, tmp_path: Path, qwen3_sdpa: TorchEmbedder) -> None:
    d = copy_model(tiny_qwen3, tmp_path / "sharded", weights={})
    weights = load_file(tiny_qwen3 / "model.safetensors")
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in shards.items():
        save_file({f"model.{k}": weights[k] for k in keys}, str(d / shard))  # prefixed keys
    index = {"weight_map": {f"model.{k}": shard for shard, keys in shards.items() for k in keys}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    batch = qwen3_batch(tiny_qwen3, TEXTS[:3])
    sharded = TorchEmbedder(d, QWEN3, dtype="float32")
    np.testing.assert_array_equal(sharded.embed(batch), qwen3_sdpa.embed(batch))
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelError, match="00002-of-00002.safetensors"):
        TorchEmbedder(d, QWEN3)


# ----------------------------------------------------------------------------- errors


def test_missing_key_names_file_and_key(tiny_qwen3: Path, tmp_path: Path) -> None:
    weights = load_file(tiny_qwen3 / "model.safetensors")
    del weights["layers.1.self_attn.k_norm.weight"]
    d = copy_model(tiny_qwen3, tmp_path / "missing", weights=weights)
    with pytest.raises(
        ModelError,
        match=r"missing/model\.safetensors: missing weights "
        r"layers\.1\.self_attn\.k_norm\.weight",
    ):
        TorchEmbedder(d, QWEN3)


def test_config_and_weights_disagree(tiny_qwen3: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_qwen3, tmp_path / "deeper", num_hidden_layers=3)
    with pytest.raises(ModelError, match=r"model\.safetensors: missing weights layers\.2\."):
        TorchEmbedder(d, QWEN3)
    d = copy_model(tiny_qwen3, tmp_path / "wider", intermediate_size=256)
    with pytest.raises(
        ModelError,
        match=r"mlp\.gate_proj\.weight' has shape \(128, 64\), "
        r"config.json implies \(256, 64\)",
    ):
        TorchEmbedder(d, QWEN3)
    weights = load_file(tiny_qwen3 / "model.safetensors")
    weights["layers.0.extra.weight"] = torch.zeros(2)
    d = copy_model(tiny_qwen3, tmp_path / "extra", weights=weights)
    with pytest.raises(ModelError, match=r"unexpected weight 'layers\.0\.extra\.weight'"):
        TorchEmbedder(d, QWEN3)


def test_model_folder_errors(tiny_qwen3: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        TorchEmbedder(tmp_path, QWEN3)
    d = copy_model(tiny_qwen3, tmp_path / "llama", model_type="llama")
    with pytest.raises(ModelError, match="'llama'"):
        TorchEmbedder(d, QWEN3)
    d = copy_model(tiny_qwen3, tmp_path / "noweights", weights={})
    with pytest.raises(ModelError, match="safetensors"):
        TorchEmbedder(d, QWEN3)
    d = copy_model(tiny_qwen3, tmp_path / "notheta", rope_parameters={"rope_type": "default"})
    with pytest.raises(ModelError, match="rope_theta"):
        TorchEmbedder(d, QWEN3)


def test_device_dtype_and_batch_errors(tiny_qwen3: Path, qwen3_sdpa: TorchEmbedder) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="cuda"):
            TorchEmbedder(tiny_qwen3, QWEN3, device="cuda")
    with pytest.raises(BackendError, match="dtype"):
        TorchEmbedder(tiny_qwen3, QWEN3, dtype="int4")
    with pytest.raises(BackendError, match="attention"):
        TorchEmbedder(tiny_qwen3, QWEN3, attention="flash")
    ids = np.array([[EOS, 1]], dtype=np.int64)
    with pytest.raises(InvalidInput, match="at least one real token"):
        qwen3_sdpa.embed(Batch(ids, np.zeros_like(ids)))
    with pytest.raises(InvalidInput, match="token ids"):
        qwen3_sdpa.embed(Batch(np.array([[10**7]]), np.array([[1]])))
    empty = np.zeros((0, 3), dtype=np.int64)
    assert qwen3_sdpa.embed(Batch(empty, empty)).shape == (0, 64)
    closed = TorchEmbedder(tiny_qwen3, QWEN3)
    closed.close()
    with pytest.raises(BackendError, match="closed"):
        closed.embed(qwen3_batch(tiny_qwen3, ["x"]))


def test_non_finite_output_is_a_backend_error(tiny_qwen3: Path, tmp_path: Path) -> None:
    weights = load_file(tiny_qwen3 / "model.safetensors")
    weights["norm.weight"] = torch.full_like(weights["norm.weight"], float("nan"))
    d = copy_model(tiny_qwen3, tmp_path / "poisoned", weights=weights)
    with pytest.raises(BackendError, match="non-finite"):
        TorchEmbedder(d, QWEN3).embed(qwen3_batch(tiny_qwen3, ["x"]))


def test_pool_last_token_and_cls_follow_the_mask() -> None:
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, left, "last_token").flatten().tolist() == [2.0, 5.0]
    assert pool(hidden, right, "last_token").flatten().tolist() == [1.0, 5.0]
    assert pool(hidden, right, "cls").flatten().tolist() == [0.0, 3.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 4.0]


def test_default_dtypes() -> None:
    assert [default_dtype(d) for d in ("cpu", "mps", "cuda")] == ["float32", "float16", "float16"]


# ----------------------------------------------------------------------------- cold start


@pytest.mark.parametrize("fixture", ["minilm", "tiny_qwen3"])
def test_load_engine_never_imports_transformers(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: Path = request.getfixturevalue(fixture)
    code = textwrap.dedent(f"""
        import sys
        from localrank.config import load_settings
        from localrank.engine.load import load_engine
        engine = load_engine(load_settings({{"model": {str(model)!r}, "backend": "cpu"}},
                                           environ={{}}))
        assert engine.info.backend.backend == "torch", engine.info.backend
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("transformers", "sentence_transformers"))
        print(heavy[:5])
        assert not heavy, heavy
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_weights_are_mapped_not_copied(tiny_qwen3: Path, tmp_path: Path) -> None:
    """A checkpoint already in the compute dtype is used where it lies in the file's memory map
    (nothing read up front, nothing held twice); a cast reads each tensor once into its final
    dtype; the token table stays mapped either way."""
    bf16 = {k: v.to(torch.bfloat16) for k, v in load_file(tiny_qwen3 / "model.safetensors").items()}
    d = copy_model(tiny_qwen3, tmp_path / "bf16", weights=bf16, torch_dtype="bfloat16")
    mapped = TorchEmbedder(d, QWEN3, dtype="bfloat16")
    model = mapped.model
    assert isinstance(model, Qwen3) and mapped._checkpoint is not None
    ranges = mapped._checkpoint._ranges
    linears = model.linears()
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down: not stacked, not copied
    assert all(lin.weight.data_ptr() in ranges for lin in linears)
    assert model.embed.data_ptr() in ranges and model.embed.dtype == torch.bfloat16
    cast = TorchEmbedder(d, QWEN3, dtype="float32")
    model32 = cast.model
    assert isinstance(model32, Qwen3) and cast._checkpoint is not None
    assert len(model32.linears()) == 2 * 4  # stacked while casting: one pass
    assert all(lin.weight.dtype == torch.float32 for lin in model32.linears())
    assert not any(lin.weight.data_ptr() in cast._checkpoint._ranges for lin in model32.linears())
    assert model32.embed.data_ptr() in cast._checkpoint._ranges  # rows widened after lookup
    batch = qwen3_batch(tiny_qwen3, TEXTS)
    a, b = unit(mapped.embed(batch)), unit(cast.embed(batch))
    assert (a * b).sum(axis=1).min() > 0.999


def test_released_pages_read_back_unchanged(tiny_qwen3: Path) -> None:
    """Dropping a mapped tensor's pages (after a cast copied it) loses nothing: a later read
    faults the file's bytes back in."""
    ckpt = MappedCheckpoint.open([tiny_qwen3 / "model.safetensors"])
    t = ckpt.tensors["embed_tokens.weight"]
    before = t.clone()
    ckpt.release(t)
    assert t.data_ptr() not in ckpt._ranges  # released once
    assert torch.equal(t, before)


def test_small_pass_runs_elementwise_work_on_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A short query's pass keeps torch's pool for its larger matmuls only (layers.small_pass);
    a long pass, and whatever runs after either, has the whole pool."""
    seen: list[int] = []
    plain = torch_layers.F.linear

    def recording(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return plain(x, w, b)

    monkeypatch.setattr(torch_layers.F, "linear", recording)
    big = torch_layers.Linear(torch.zeros(1024, 1024))
    tiny = torch_layers.Linear(torch.zeros(8, 8))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_layers.small_pass(10):
            inside = torch.get_num_threads()
            with torch_layers.small_pass(10):  # nested: still the one small pass
                big(torch.zeros(10, 1024))
            tiny(torch.zeros(10, 8))
            after_matmul = torch.get_num_threads()
        assert (inside, after_matmul, seen) == (1, 1, [2, 1])
        assert torch.get_num_threads() == 2
        seen.clear()
        with torch_layers.small_pass(torch_layers.SMALL_PASS_ROWS + 1):
            assert torch.get_num_threads() == 2
            tiny(torch.zeros(100, 8))
        assert seen == [2]
    finally:
        torch.set_num_threads(before)


def test_a_new_thread_runs_its_passes_with_the_engines_thread_count() -> None:
    """torch gives a thread, at its first op, the count some thread set last. The daemon's model
    thread, first used while the background repack held its own thread to one (a small pass),
    must still run every pass on the configured pool (layers.claim_threads)."""
    before, intra = torch.get_num_threads(), torch_layers._intra[0]
    configure_threads(2)
    seen: dict[str, int] = {}

    def first_passes() -> None:
        with torch_layers.small_pass(torch_layers.SMALL_PASS_ROWS + 1):
            seen["long pass"] = torch.get_num_threads()
        with torch_layers.small_pass(10):
            seen["small pass's pool"] = torch_layers._pool.threads

    try:
        torch.set_num_threads(1)  # another thread, inside a small pass, at that moment
        thread = threading.Thread(target=first_passes)
        thread.start()
        thread.join()
        assert seen == {"long pass": 2, "small pass's pool": 2}
    finally:
        torch_layers.set_intra_threads(intra)
        torch.set_num_threads(before)


def test_q_and_k_heads_normed_together_match_their_own_norms() -> None:
    """Qwen3's forward norms q's and k's heads in one op with a weight per head: bit for bit
    what q_norm and k_norm give apart; `joined` sees q and k as one view where they are
    adjacent columns of a stacked projection's output, and copies them otherwise."""
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(9, 32 * 128, generator=gen) * 3
    q, k, _ = out.split([16 * 128, 8 * 128, 8 * 128], dim=1)
    qk = joined(q, k)
    assert qk.data_ptr() == out.data_ptr() and torch.equal(qk, out[:, : 24 * 128])
    apart = joined(q.clone(), k.clone())
    assert apart.data_ptr() != out.data_ptr() and torch.equal(apart, qk)
    wq, wk = torch.rand(128, generator=gen) + 0.5, torch.rand(128, generator=gen) + 0.5
    heads = qk.view(9, 24, 128)
    together = torch_layers.rms_norm(heads, torch.cat([wq.expand(16, -1), wk.expand(8, -1)]), 1e-6)
    each = torch.cat(
        [
            torch_layers.rms_norm(heads[:, :16], wq, 1e-6),
            torch_layers.rms_norm(heads[:, 16:], wk, 1e-6),
        ],
        dim=1,
    )
    assert torch.equal(together, each)


@pytest.mark.parametrize("shape", [(7, 1024), (3, 9, 16, 128), (1, 1, 8, 64)])
def test_fused_rms_norm_computes_qwen3s_rms_norm(shape: tuple[int, ...]) -> None:
    """float32 on CPU takes torch's fused RMSNorm: the same numbers as Qwen3RMSNorm's
    op-by-op form (statistics in float32, then the weight)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen) * 3
    w = torch.randn(shape[-1], generator=gen)
    want = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    got = torch_layers.rms_norm(x, w, 1e-6)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_rope_is_hfs_apply_rotary_pos_emb() -> None:
    """layers.rope (roll and a signed sin) computes HF's x * cos + rotate_half(x) * sin."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 64, generator=gen)
    angles = torch.randn(5, 32, generator=gen)
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    rotated = torch.cat((-x[..., 32:], x[..., :32]), dim=-1)
    want = x * cos + rotated * sin
    assert torch.equal(torch_layers.rope(x, cos, torch_layers.signed_sin(sin)), want)
