"""The MLX backend on its own: our Qwen3 and BERT forwards against transformers and
sentence-transformers, the quantised path, the traps (left-padding NaN, rope_theta), memory.

Batches are built here by hand from `tokenizers` so that nothing but the backend is under test.
mlx[cpu] runs these on Linux; on a Mac the same tests run on Metal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from backend_inputs import EOS, MINILM, QWEN3, copy_model, pad, unit
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from localrank.engine.mlx import MLXEmbedder, attention_mask
from localrank.engine.model_files import qwen3_rope_theta
from localrank.engine.types import Batch
from localrank.errors import BackendError, InvalidInput, ModelError

TEXTS = [
    "",  # the appended <|endoftext|> alone: a one-token input
    "a",
    "What is the capital of France?",
    "Paris is the capital and largest city of France, on the Seine. " * 4,
    "Ünïcödé — 日本語のテキスト, emoji 🚀🌍 and Ελληνικά",
    "   \t  \n ",  # whitespace only
    "repeat me",
    "repeat me",
]


def tokenize(
    model_dir: Path, texts: list[str], *, append_eos: bool, max_tokens: int
) -> list[list[int]]:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    out = []
    for t in texts:
        ids = tok.encode(t).ids
        if append_eos and (not ids or ids[-1] != EOS):
            ids.append(EOS)
        out.append(ids[:max_tokens])
    return out


def qwen3_batch(model_dir: Path, texts: list[str], side: str = "left") -> Batch:
    return pad(tokenize(model_dir, texts, append_eos=True, max_tokens=8192), side, EOS)


def qwen3_authors(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The Qwen3-Embedding model card recipe, run through transformers."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    return F.normalize(hidden[:, -1], p=2, dim=1).numpy()


@pytest.fixture(scope="module")
def qwen3_mlx(tiny_qwen3: Path) -> MLXEmbedder:
    return MLXEmbedder(tiny_qwen3, QWEN3, dtype="float32")


@pytest.fixture(scope="module")
def qwen3_ref(tiny_qwen3: Path) -> np.ndarray:
    return qwen3_authors(tiny_qwen3, TEXTS)


# ----------------------------------------------------------------------------- Qwen3 parity


def test_qwen3_info_is_read_back(qwen3_mlx: MLXEmbedder) -> None:
    info = qwen3_mlx.info
    assert (info.backend, info.dtype, info.dim, info.pooling, info.max_tokens) == (
        "mlx",
        "float32",
        64,
        "last_token",
        8192,
    )
    assert info.device == ("gpu" if mx.metal.is_available() else "cpu")


def test_qwen3_batched_left_padded_matches_transformers(
    tiny_qwen3: Path, qwen3_mlx: MLXEmbedder, qwen3_ref: np.ndarray
) -> None:
    batch = qwen3_batch(tiny_qwen3, TEXTS)
    assert batch.attention_mask.sum(axis=1).min() == 1  # the one-token row really is there
    got = qwen3_mlx.embed(batch)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 64)
    assert np.isfinite(got).all()
    diff = np.abs(unit(got) - qwen3_ref).max()
    assert diff < 1e-4, diff
    np.testing.assert_array_equal(got[6], got[7])  # repeated texts


def test_qwen3_one_at_a_time_matches_transformers(
    tiny_qwen3: Path, qwen3_mlx: MLXEmbedder, qwen3_ref: np.ndarray
) -> None:
    got = np.concatenate([qwen3_mlx.embed(qwen3_batch(tiny_qwen3, [t])) for t in TEXTS])
    assert np.abs(unit(got) - qwen3_ref).max() < 1e-4


def test_qwen3_last_token_index_comes_from_the_mask(
    tiny_qwen3: Path, qwen3_mlx: MLXEmbedder
) -> None:
    # Causal attention: the last real token's state does not depend on the padding side.
    left = qwen3_mlx.embed(qwen3_batch(tiny_qwen3, TEXTS, "left"))
    right = qwen3_mlx.embed(qwen3_batch(tiny_qwen3, TEXTS, "right"))
    assert np.abs(unit(left) - unit(right)).max() < 1e-4


def test_qwen3_left_padded_rows_have_no_nan_anywhere(
    tiny_qwen3: Path, qwen3_mlx: MLXEmbedder
) -> None:
    # The mlx-embeddings bug: padding query rows see no key under an additive -inf mask, go NaN,
    # and 0 * NaN spreads. Check every hidden state, padding positions included.
    batch = qwen3_batch(tiny_qwen3, ["", "a much longer input than the first one, by far"])
    real = batch.attention_mask != 0
    assert not real[0, 0]  # row 0 is mostly left padding
    model = qwen3_mlx._model
    assert model is not None
    hidden = model(mx.array(batch.input_ids.astype(np.int32)), attention_mask(real, causal=True))
    assert np.isfinite(np.array(hidden)).all()


def test_rope_theta_is_read_from_rope_parameters(
    tiny_qwen3: Path, tmp_path: Path, qwen3_mlx: MLXEmbedder
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
    base = unit(qwen3_mlx.embed(batch))
    changed = unit(MLXEmbedder(other, QWEN3, dtype="float32").embed(batch))
    assert np.abs(base - changed).max() > 1e-3  # theta really matters for these inputs
    assert np.abs(changed - qwen3_authors(other, texts)).max() < 1e-4


def test_rope_theta_resolution(tmp_path: Path) -> None:
    src = tmp_path / "config.json"
    assert qwen3_rope_theta({"rope_theta": 5.0}, src) == 5.0
    assert qwen3_rope_theta({"rope_parameters": {"rope_theta": 7.0}}, src) == 7.0
    # transformers 5 gives rope_parameters priority; so do we.
    assert qwen3_rope_theta({"rope_theta": 5.0, "rope_parameters": {"rope_theta": 7.0}}, src) == 7.0
    with pytest.raises(ModelError, match="rope_theta"):
        qwen3_rope_theta({}, src)
    with pytest.raises(ModelError, match="yarn"):
        qwen3_rope_theta({"rope_parameters": {"rope_type": "yarn", "rope_theta": 7.0}}, src)


def test_qwen3_other_dtypes(tiny_qwen3: Path, qwen3_ref: np.ndarray) -> None:
    batch = qwen3_batch(tiny_qwen3, TEXTS)
    for dtype in ("bfloat16", "float16"):
        emb = MLXEmbedder(tiny_qwen3, QWEN3, dtype=dtype)
        assert emb.info.dtype == dtype
        cos = (unit(emb.embed(batch)) * qwen3_ref).sum(axis=1)
        assert cos.min() > 0.99, (dtype, cos)
        emb.close()


# ----------------------------------------------------------------------------- quantised


def quantise_like_mlx_community(src: Path, dst: Path, group_size: int, bits: int) -> Path:
    """weight (uint32) + scales + biases per linear / embedding and a "quantization" entry,
    saved with the "model." prefix and an lm_head as *ForCausalLM conversions are."""
    dst.mkdir(parents=True)
    quantised: dict[str, mx.array] = {}
    for k, w in mx.load(str(src / "model.safetensors")).items():  # type: ignore[union-attr]
        if k.endswith(".weight") and w.ndim == 2:
            q, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
            base = k[: -len(".weight")]
            quantised.update(
                {f"model.{k}": q, f"model.{base}.scales": scales, f"model.{base}.biases": biases}
            )
        else:
            quantised[f"model.{k}"] = w
    quantised["lm_head.weight"] = quantised["model.embed_tokens.weight"]
    mx.save_safetensors(str(dst / "model.safetensors"), quantised)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization"] = {"group_size": group_size, "bits": bits}
    cfg["architectures"] = ["Qwen3ForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(("bits", "group_size", "min_cos"), [(8, 64, 0.98), (4, 32, 0.9)])
def test_quantised_qwen3(
    tiny_qwen3: Path,
    tmp_path: Path,
    qwen3_ref: np.ndarray,
    bits: int,
    group_size: int,
    min_cos: float,
) -> None:
    qdir = quantise_like_mlx_community(tiny_qwen3, tmp_path / f"q{bits}", group_size, bits)
    emb = MLXEmbedder(qdir, QWEN3)
    assert emb.quantization == {"group_size": group_size, "bits": bits}
    assert emb.info.dtype == "float32"  # auto: the dtype the scales were saved in
    model = emb._model
    assert model is not None
    assert isinstance(model.embed_tokens, nn.QuantizedEmbedding)
    assert isinstance(model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    got = unit(emb.embed(qwen3_batch(tiny_qwen3, TEXTS)))
    cos = (got * qwen3_ref).sum(axis=1)
    assert cos.min() > min_cos, cos
    assert np.abs(got - qwen3_ref).max() > 1e-6  # really the quantised weights, not the floats


# ----------------------------------------------------------------------------- int8 at load


def test_int8_qwen3_quantises_at_load(tiny_qwen3: Path, qwen3_ref: np.ndarray) -> None:
    """--dtype int8: a float checkpoint's linear layers and embedding table in 8 bits (groups of
    64), everything else as in float32; near the float32 recipe, and really quantised."""
    emb = MLXEmbedder(tiny_qwen3, QWEN3, dtype="int8")
    assert emb.info.dtype == "int8" and "8 bits" in emb.info.dtype_reason
    assert emb.quantization == {"group_size": 64, "bits": 8}
    model = emb._model
    assert model is not None
    assert isinstance(model.embed_tokens, nn.QuantizedEmbedding)
    layer = model.layers[0]
    for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert isinstance(linear, nn.QuantizedLinear) and linear.bits == 8
    assert layer.input_layernorm.weight.dtype == mx.float32
    got = unit(emb.embed(qwen3_batch(tiny_qwen3, TEXTS)))
    cos = (got * qwen3_ref).sum(axis=1)
    assert cos.min() >= 0.999, cos
    assert np.abs(got - qwen3_ref).max() > 1e-5  # the quantised weights, not the floats
    one = unit(emb.embed(qwen3_batch(tiny_qwen3, TEXTS[2:3])))
    assert np.abs(one - got[2:3]).max() < 1e-4  # padding does not change a row
    emb.close()


def test_int8_minilm_real_weights_near_float32(minilm: Path) -> None:
    """all-MiniLM-L6-v2's real weights in 8 bits: min cosine >= 0.999 to sentence-transformers
    in float32 (0.9995 measured)."""
    from sentence_transformers import SentenceTransformer

    want = SentenceTransformer(str(minilm), device="cpu").encode(
        MINILM_TEXTS, normalize_embeddings=True
    )
    emb = MLXEmbedder(minilm, MINILM, dtype="int8")
    assert emb.info.dtype == "int8"
    query = emb._model.encoder.layer[0].attention.self.query  # type: ignore[union-attr]
    assert isinstance(query, nn.QuantizedLinear)
    got = unit(emb.embed(minilm_batch(minilm, MINILM_TEXTS)))
    cos = (got * want).sum(axis=1)
    assert cos.min() >= 0.999, cos
    assert np.abs(got - want).max() > 1e-5
    assert got[0] @ got[1] > got[0] @ got[2]  # the paraphrase is still nearer
    emb.close()


def test_int8_refuses_an_already_quantised_checkpoint(tiny_qwen3: Path, tmp_path: Path) -> None:
    qdir = quantise_like_mlx_community(tiny_qwen3, tmp_path / "q4", 32, 4)
    with pytest.raises(BackendError, match="already quantised .*use dtype auto"):
        MLXEmbedder(qdir, QWEN3, dtype="int8")


# ----------------------------------------------------------------------------- BERT


MINILM_TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, I loved every minute of it " * 3,
    "Ünïcödé — 日本語, emoji 🚀",
    "   ",
    "hi",
    "hi",
]


def minilm_batch(model_dir: Path, texts: list[str]) -> Batch:
    # The tokenizer adds [CLS] ... [SEP]; max 256 tokens, right padding.
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    return pad([tok.encode(t).ids for t in texts], "right", 0)


@pytest.fixture(scope="module")
def minilm_mlx(minilm: Path) -> MLXEmbedder:
    return MLXEmbedder(minilm, MINILM, dtype="float32")


def test_minilm_matches_sentence_transformers(minilm: Path, minilm_mlx: MLXEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    want = SentenceTransformer(str(minilm), device="cpu").encode(
        MINILM_TEXTS, normalize_embeddings=True
    )
    got = unit(minilm_mlx.embed(minilm_batch(minilm, MINILM_TEXTS)))
    assert minilm_mlx.info.dim == 384 and minilm_mlx.info.pooling == "mean"
    assert np.abs(got - want).max() < 1e-5
    one = unit(minilm_mlx.embed(minilm_batch(minilm, MINILM_TEXTS[5:6])))
    assert np.abs(one - want[5:6]).max() < 1e-5
    assert got[0] @ got[1] > got[0] @ got[2]  # the paraphrase is nearer


def test_minilm_cls_pooling_matches_transformers(minilm: Path) -> None:
    texts = MINILM_TEXTS[:2] + MINILM_TEXTS[5:6]
    batch = minilm_batch(minilm, texts)
    emb = MLXEmbedder(
        minilm, MINILM.__class__(**{**MINILM.__dict__, "pooling": "cls"}), dtype="float32"
    )
    model = AutoModel.from_pretrained(str(minilm), dtype=torch.float32).eval()
    with torch.inference_mode():
        hidden = model(
            input_ids=torch.tensor(batch.input_ids),
            attention_mask=torch.tensor(batch.attention_mask),
        ).last_hidden_state
    assert np.abs(emb.embed(batch) - hidden[:, 0].numpy()).max() < 1e-4


# ----------------------------------------------------------------------------- errors, memory


def test_missing_weights_file_is_a_model_error(tiny_qwen3: Path, tmp_path: Path) -> None:
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(tiny_qwen3 / "config.json", d / "config.json")
    with pytest.raises(ModelError, match="safetensors"):
        MLXEmbedder(d, QWEN3)
    with pytest.raises(ModelError, match="config.json"):
        MLXEmbedder(tmp_path, QWEN3)


def test_unknown_model_type_is_a_model_error(tiny_qwen3: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_qwen3, tmp_path / "llama", model_type="llama")
    with pytest.raises(ModelError, match="llama"):
        MLXEmbedder(d, QWEN3)


def test_mismatched_weights_name_file_and_key(tiny_qwen3: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_qwen3, tmp_path / "deeper", num_hidden_layers=3)
    with pytest.raises(ModelError, match=r"model\.safetensors: missing weights layers\.2\."):
        MLXEmbedder(d, QWEN3)
    d = copy_model(tiny_qwen3, tmp_path / "wider", intermediate_size=256)
    with pytest.raises(ModelError, match=r"mlp\.gate_proj\.weight' has shape \(128, 64\)"):
        MLXEmbedder(d, QWEN3)


def test_non_finite_output_is_a_backend_error(tiny_qwen3: Path, tmp_path: Path) -> None:
    d = tmp_path / "poisoned"
    d.mkdir()
    shutil.copy(tiny_qwen3 / "config.json", d / "config.json")
    weights = dict(mx.load(str(tiny_qwen3 / "model.safetensors")))  # type: ignore[arg-type]
    weights["norm.weight"] = mx.full(weights["norm.weight"].shape, float("nan"))
    mx.save_safetensors(str(d / "model.safetensors"), weights)
    with pytest.raises(BackendError, match="non-finite"):
        MLXEmbedder(d, QWEN3).embed(qwen3_batch(tiny_qwen3, ["x"]))


def test_bad_batches_and_devices(tiny_qwen3: Path, qwen3_mlx: MLXEmbedder) -> None:
    ids = np.array([[EOS, 1]], dtype=np.int64)
    with pytest.raises(InvalidInput, match="at least one real token"):
        qwen3_mlx.embed(Batch(ids, np.zeros_like(ids)))
    with pytest.raises(InvalidInput, match="token ids"):
        qwen3_mlx.embed(Batch(np.array([[10**7]]), np.array([[1]])))
    empty = np.zeros((0, 3), dtype=np.int64)
    assert qwen3_mlx.embed(Batch(empty, empty)).shape == (0, 64)
    if not mx.metal.is_available():
        with pytest.raises(BackendError, match="Metal"):
            MLXEmbedder(tiny_qwen3, QWEN3, device="gpu")
    with pytest.raises(BackendError, match="dtype"):
        MLXEmbedder(tiny_qwen3, QWEN3, dtype="int4")
    closed = MLXEmbedder(tiny_qwen3, QWEN3)
    closed.close()
    with pytest.raises(BackendError, match="closed"):
        closed.embed(qwen3_batch(tiny_qwen3, ["x"]))


def test_memory_stays_flat_across_varied_lengths(tiny_qwen3: Path, qwen3_mlx: MLXEmbedder) -> None:
    rng = np.random.default_rng(0)
    qwen3_mlx.embed(qwen3_batch(tiny_qwen3, ["warm up"]))
    active_before = mx.get_active_memory()
    mx.reset_peak_memory()
    for i in range(40):
        b, t = int(rng.integers(1, 9)), int(rng.integers(1, 200))
        ids = rng.integers(0, 150000, size=(b, t))
        mask = np.ones_like(ids)
        mask[0, : t // 2] = 0  # some left padding
        qwen3_mlx.embed(Batch(ids, mask))
        assert mx.get_cache_memory() < 1 << 20, (i, mx.get_cache_memory())
    assert mx.get_active_memory() - active_before < 1 << 20
    assert mx.get_peak_memory() < active_before + (256 << 20)


def test_sharded_checkpoint(tiny_qwen3: Path, tmp_path: Path, qwen3_mlx: MLXEmbedder) -> None:
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(tiny_qwen3 / "config.json", d / "config.json")
    weights = dict(mx.load(str(tiny_qwen3 / "model.safetensors")))  # type: ignore[arg-type]
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in shards.items():
        mx.save_safetensors(str(d / shard), {k: weights[k] for k in keys})
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    batch = qwen3_batch(tiny_qwen3, TEXTS[:3])
    np.testing.assert_array_equal(MLXEmbedder(d, QWEN3).embed(batch), qwen3_mlx.embed(batch))
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelError, match="00002-of-00002.safetensors"):
        MLXEmbedder(d, QWEN3)


# ----------------------------------------------------------------------------- int8 by "auto"


def test_the_int8_probe_times_both_matmuls() -> None:
    from localrank.engine.mlx.embedder import int8_timing

    plain, quantised = int8_timing(mx.Device(mx.cpu), mx.float32)
    assert 0 < plain < 10 and 0 < quantised < 10


def test_auto_on_metal_picks_int8_where_the_probe_finds_it_faster(
    tiny_qwen3: Path, qwen3_ref: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The selection as Metal would run it (the probe's verdict given; the device taken for
    Metal): Qwen3 quantised at load, checked on the calibration texts against the float model,
    near the authors' recipe; a check that fails gives the float model back, exactly; the
    collections' precision is kept. On mlx[cpu] itself "auto" never probes."""
    from localrank.engine.mlx import embedder as mlx_embedder

    ids = tokenize(tiny_qwen3, TEXTS[1:5], append_eos=True, max_tokens=64)
    plain = MLXEmbedder(tiny_qwen3, QWEN3, calibration=ids)
    assert plain.info.dtype == "float32" and "int8" not in plain.info.dtype_reason
    monkeypatch.setattr(mlx_embedder, "INT8_PROBED_ON", ("gpu", "cpu"))
    monkeypatch.setattr(mlx_embedder, "int8_timing", lambda device, dtype: (3e-3, 1e-3))
    emb = MLXEmbedder(tiny_qwen3, QWEN3, calibration=ids)
    reason = emb.info.dtype_reason
    assert emb.info.dtype == "int8" and "3.0x faster than float32" in reason, reason
    assert "min cosine 0.99" in reason and "on 4 calibration texts" in reason
    assert isinstance(emb._model.layers[0].mlp.down_proj, nn.QuantizedLinear)  # type: ignore[union-attr]
    got = unit(emb.embed(qwen3_batch(tiny_qwen3, TEXTS)))
    assert (got * qwen3_ref).sum(axis=1).min() >= 0.999
    kept = MLXEmbedder(tiny_qwen3, QWEN3, calibration=ids, held="float")
    assert kept.info.dtype == "float32" and "collections hold float" in kept.info.dtype_reason
    from localrank.engine import precision

    for module in (precision, mlx_embedder):
        monkeypatch.setattr(module, "INT8_MIN_COSINE", 0.9999999)
    undone = MLXEmbedder(tiny_qwen3, QWEN3, calibration=ids)
    assert undone.info.dtype == "float32" and "needs 0.9999999" in undone.info.dtype_reason
    batch = qwen3_batch(tiny_qwen3, TEXTS)
    np.testing.assert_array_equal(undone.embed(batch), plain.embed(batch))
    held = MLXEmbedder(tiny_qwen3, QWEN3, calibration=ids, held="int8")  # not checked: kept
    assert held.info.dtype == "int8" and "collections hold int8" in held.info.dtype_reason
