"""Recipe rules, batching, selection, resolution and bad input: the engine's contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engines import engine_for

from localrank.config import load_settings
from localrank.engine.batching import bucket_length, pad, plan_batches
from localrank.engine.core import apply_dimensions
from localrank.engine.load import load_engine
from localrank.engine.mlx import FAMILIES as MLX_FAMILIES
from localrank.engine.names import canonical_name
from localrank.engine.recipe import DECODER_FAMILIES, ENCODER_FAMILIES
from localrank.engine.resolve import resolve_model
from localrank.engine.select import Probe, choose_backend
from localrank.engine.torch import FAMILIES as TORCH_FAMILIES
from localrank.errors import BackendError, InvalidInput, ModelError, TooLarge, http_status


def test_plan_batches_respects_budget_and_keeps_every_index() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, size=500).tolist()
    plan = plan_batches(lengths, max_batch_tokens=4096, max_batch_size=64)
    assert sorted(i for b in plan for i in b) == list(range(500))
    for b in plan:
        width = max(bucket_length(lengths[i]) for i in b)
        assert width * len(b) <= 4096 or len(b) == 1
        assert len(b) <= 64
    # Sorted by length: few distinct padded shapes, little padding.
    widths = {max(bucket_length(lengths[i]) for i in b) for b in plan}
    assert len(widths) <= len(plan)
    padded = sum(max(bucket_length(lengths[i]) for i in b) * len(b) for b in plan)
    assert padded < 1.2 * sum(bucket_length(n) for n in lengths)


def test_pad_left_and_right() -> None:
    left = pad([[1, 2, 3], [4]], pad_id=0, side="left", bucket=False)
    assert left.input_ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert left.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    right = pad([[1, 2, 3], [4]], pad_id=0, side="right", bucket=False)
    assert right.input_ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad([[1] * 9], pad_id=0, side="left").shape == (1, 16)


def test_choose_backend_order() -> None:
    mac = Probe(mlx=True, metal=True, torch=True, mps=True)
    assert choose_backend("auto", mac) == ("mlx", "gpu")
    assert choose_backend("auto", Probe(torch=True, mps=True)) == ("torch", "mps")
    assert choose_backend("auto", Probe(torch=True, mps=False, cuda=True)) == ("torch", "cuda")
    linux = Probe(mlx=True, metal=False, torch=True)
    assert choose_backend("auto", linux) == ("torch", "cpu")  # MLX on CPU is slower than torch
    assert choose_backend("mlx", linux) == ("mlx", "cpu")
    assert choose_backend("auto", Probe(mlx=True)) == ("mlx", "cpu")
    assert choose_backend("mps", mac) == ("torch", "mps")
    with pytest.raises(BackendError, match="not available"):
        choose_backend("cuda", linux)
    with pytest.raises(BackendError, match="no backend"):
        choose_backend("auto", Probe(notes={"torch": "cannot import torch: boom"}))


def test_backend_torch_means_torch_on_its_best_device() -> None:
    """--backend torch (embed-rerank's BACKEND value): MPS, then CUDA, then CPU; never MLX."""
    mac = Probe(mlx=True, metal=True, torch=True, mps=True)
    assert choose_backend("torch", mac) == ("torch", "mps")
    assert choose_backend("torch", Probe(torch=True, cuda=True)) == ("torch", "cuda")
    assert choose_backend("torch", Probe(mlx=True, metal=False, torch=True)) == ("torch", "cpu")
    with pytest.raises(BackendError, match="needs torch"):
        choose_backend("torch", Probe(mlx=True, metal=True, notes={"torch": "not installed"}))


def test_qwen3_prompt_format_and_eos(tiny_qwen3: Path) -> None:
    engine = engine_for(str(tiny_qwen3), "cpu")
    assert engine.format_query("q?", None) == (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query"
        "\nQuery:q?"
    )
    assert engine.format_query("q?", "Find code") == "Instruct: Find code\nQuery:q?"
    assert engine.format_query("q?", "") == "q?"
    for enc in engine.prepare(["hello", "", "x " * 100]):
        assert enc.ids[-1] == 151643
        assert enc.ids.count(151643) == 1
        assert len(enc.ids) <= 48
    # Token ids that already end in EOS do not get a second one.
    ids = engine.prepare([[14990, 151643]])[0].ids
    assert ids == [14990, 151643]


def test_truncation_is_counted_or_refused(tiny_qwen3: Path) -> None:
    engine = engine_for(str(tiny_qwen3), "cpu")
    result = engine.embed(["short", "word " * 100, "word " * 47, "word " * 46])
    # 47 words are 48 tokens (the trailing space is one) + EOS: cut; 46 words + EOS fit.
    assert result.truncated == 2
    with pytest.raises(TooLarge, match="truncation is off") as info:
        engine.embed(["short", "word " * 100], truncate=False)
    assert http_status(info.value) == 413


def test_dimensions(tiny_qwen3: Path) -> None:
    engine = engine_for(str(tiny_qwen3), "cpu")
    full = engine.embed(["matryoshka"]).vectors
    cut = engine.embed(["matryoshka"], dimensions=32).vectors
    assert cut.shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(cut), 1.0, atol=1e-6)
    np.testing.assert_allclose(cut[0], full[0, :32] / np.linalg.norm(full[0, :32]), atol=1e-6)
    for bad in (16, 65, 0, -1):
        with pytest.raises(InvalidInput, match="dimensions"):
            engine.embed(["x"], dimensions=bad)
    with pytest.raises(InvalidInput):
        apply_dimensions(full, "32")  # type: ignore[arg-type]


def test_bad_inputs(tiny_qwen3: Path) -> None:
    engine = engine_for(str(tiny_qwen3), "cpu")
    with pytest.raises(InvalidInput, match="must not be empty"):
        engine.embed([])
    with pytest.raises(InvalidInput, match=r"input\[1\] must be a string"):
        engine.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="list of strings"):
        engine.embed("not a list")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="token ids outside"):
        engine.embed([[1, 2, 10**9]])
    with pytest.raises(InvalidInput, match="empty token list"):
        engine.embed([[]])


def test_importing_the_engine_imports_neither_torch_nor_mlx() -> None:
    # Each backend package is imported by select.create_embedder once that backend is chosen.
    code = (
        "import sys, localrank.engine.load, localrank.engine.model_files; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(sys.platform != "linux", reason="GNU OpenMP: the Linux wheels' runtime")
@pytest.mark.parametrize(
    ("user", "spin"),
    [({}, "10000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "30000000000"), ({"GOMP_SPINCOUNT": "7"}, "7")],
)
def test_openmp_workers_spin_briefly_unless_the_user_chose(
    tiny_qwen3: Path, user: dict[str, str], spin: str
) -> None:
    """Loading an engine sets GNU OpenMP's spin before torch loads it (engine/load.py says why),
    and keeps what the user set. Read from the runtime itself, in a fresh process."""
    code = (
        "from localrank.config import load_settings\n"
        "from localrank.engine.load import load_engine\n"
        f"settings = load_settings({{'model': {str(tiny_qwen3)!r}}}, environ={{}})\n"
        "load_engine(settings).embed(['hi'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(user, OMP_DISPLAY_ENV="VERBOSE")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"GOMP_SPINCOUNT = '{spin}'" in out.stderr, out.stderr[-3000:]


def test_every_family_has_a_recipe_and_both_backends() -> None:
    families = {*DECODER_FAMILIES, *ENCODER_FAMILIES}
    assert set(TORCH_FAMILIES) == families
    assert set(MLX_FAMILIES) == families


@pytest.mark.parametrize("missing", ["tokenizer.json", "config.json", "model.safetensors"])
def test_model_folder_with_missing_files(tiny_qwen3: Path, tmp_path: Path, missing: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen3, broken)
    (broken / missing).unlink()
    with pytest.raises(ModelError) as info:
        load_engine(load_settings({"model": str(broken), "backend": "cpu"}, environ={}))
    assert "broken" in info.value.message
    if missing != "model.safetensors":
        assert missing in info.value.message


def test_encoder_without_pooling_config_is_refused(minilm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "nopool"
    shutil.copytree(minilm, folder)
    (folder / "modules.json").unlink()
    with pytest.raises(ModelError, match="modules.json"):
        load_engine(load_settings({"model": str(folder), "backend": "cpu"}, environ={}))


def test_resolution(minilm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert canonical_name("qwen3-0.6b") == "Qwen/Qwen3-Embedding-0.6B"
    assert canonical_name("MiniLM") == "sentence-transformers/all-MiniLM-L6-v2"
    found = resolve_model(str(minilm), allow_fallback=False)
    assert found.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert found.fallback_reason is None
    # Named explicitly: never falls back.
    with pytest.raises(ModelError, match="localrank pull Qwen/Qwen3-Embedding-4B"):
        resolve_model("Qwen/Qwen3-Embedding-4B", allow_fallback=False)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"), allow_fallback=False)
    # The default setting falls back, and says why.
    fb = resolve_model("Qwen/Qwen3-Embedding-0.6B", allow_fallback=True)
    assert fb.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert fb.fallback_reason and "Qwen/Qwen3-Embedding-0.6B" in fb.fallback_reason


def test_explicit_model_never_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    named = load_settings({"model": "Qwen/Qwen3-Embedding-0.6B"}, environ={})
    assert not named.model_is_default
    with pytest.raises(ModelError, match="not on this machine"):
        load_engine(named)
    from_env = load_settings(environ={"LOCALRANK_MODEL": "Qwen/Qwen3-Embedding-0.6B"})
    assert not from_env.model_is_default
    assert load_settings(environ={}).model_is_default


def test_cli_embed_json_minilm(minilm: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "localrank", "embed", "--json", "--model", str(minilm)]
        + ["--dtype", "float32", "hello"],  # compared with the recipe's, whatever the CPU
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (doc["backend"], doc["device"], doc["dtype"], doc["dim"]) == (
        "torch",
        "cpu",
        "float32",
        384,
    )
    assert len(doc["embeddings"]) == 1 and len(doc["embeddings"][0]) == 384
    assert abs(np.linalg.norm(doc["embeddings"][0]) - 1.0) < 1e-5


def test_cli_explicit_missing_model_fails_with_reason(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "localrank", "embed", "--model", str(tmp_path / "none"), "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "does not exist" in out.stderr
