"""Which names a served model answers to: a folder recognised as a known model (Hugging Face
cache snapshot, a copy identified by content, a folder named after it), the names the user gave,
and the names every daemon answers to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from localrank.config import load_settings
from localrank.engine.load import load_engine
from localrank.engine.names import (
    STABLE_NAME,
    answers_to,
    hf_cache_repo,
    identify_folder,
    model_names,
)
from localrank.engine.resolve import folder_revision, resolve_model

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def copy_of(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest


def edited_config(folder: Path) -> Path:
    """Change config.json without changing what it describes: the content no longer matches."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["_copied_by"] = "a test"
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_hugging_face_cache_snapshot_is_its_repo(minilm: Path, tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots"
    folder = edited_config(copy_of(minilm, snapshot / COMMIT))
    resolved = resolve_model(str(folder), allow_fallback=False)
    assert resolved.model_id == MINILM_ID
    assert resolved.revision == COMMIT[:12]  # the same revision as when resolved by its id
    other = copy_of(
        minilm, tmp_path / "hub" / "models--BAAI--bge-small-en-v1.5" / "snapshots" / "1"
    )
    assert resolve_model(str(other), allow_fallback=False).model_id == "BAAI/bge-small-en-v1.5"
    assert hf_cache_repo(tmp_path / "models--x" / "snapshots" / "1") is None  # no org


def test_a_copy_of_a_known_package_is_recognised_by_content(minilm: Path, tmp_path: Path) -> None:
    copy = copy_of(minilm, tmp_path / "somewhere" / "my-embedder")
    resolved = resolve_model(str(copy), allow_fallback=False)
    assert resolved.model_id == MINILM_ID
    assert resolved.revision == folder_revision(minilm)
    # Edited, at a name that says nothing: just a folder.
    edited = edited_config(copy_of(minilm, tmp_path / "edited"))
    assert identify_folder(edited) is None
    assert resolve_model(str(edited), allow_fallback=False).model_id == "edited"


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "minilm", "all-minilm"])
def test_a_folder_named_like_a_known_model_is_it(minilm: Path, tmp_path: Path, name: str) -> None:
    folder = edited_config(copy_of(minilm, tmp_path / name))
    assert identify_folder(folder) == MINILM_ID


def test_a_name_does_not_override_what_the_folder_holds(tiny_qwen3: Path, tmp_path: Path) -> None:
    """A folder called minilm that holds a Qwen3 is not all-MiniLM-L6-v2 (nor Qwen3-0.6B: the
    tiny test model is not its size)."""
    assert identify_folder(copy_of(tiny_qwen3, tmp_path / "minilm")) is None
    assert identify_folder(copy_of(tiny_qwen3, tmp_path / "qwen3-0.6b")) is None
    assert model_names("minilm") == ("minilm", STABLE_NAME)


def test_model_names_order_and_aliases() -> None:
    names = model_names(MINILM_ID, ("text-embedding-3-small", "MINILM"))
    assert names == (
        "text-embedding-3-small",
        "MINILM",  # the user's spelling wins; "minilm" is not listed twice
        MINILM_ID,
        "all-MiniLM-L6-v2",
        "all-minilm",
        "all-minilm:l6-v2",
        STABLE_NAME,
    )
    qwen = model_names("Qwen/Qwen3-Embedding-0.6B")
    assert {"qwen3-0.6b", "qwen3-embedding:0.6b", "Qwen3-Embedding-0.6B"} <= set(qwen)
    # The MLX conversion served on Apple GPUs answers to the model's own names too.
    mlx = model_names("mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ")
    assert mlx[0] == "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ"
    assert "Qwen/Qwen3-Embedding-0.6B" in mlx and "qwen3-embedding:0.6b" in mlx


def test_answers_to() -> None:
    names = model_names(MINILM_ID, ("my-embedder",))
    for name in (MINILM_ID, MINILM_ID.upper(), "My-Embedder", "minilm", "", "default", STABLE_NAME):
        assert answers_to(name, names), name
    for name in ("text-embedding-3-small", "Qwen/Qwen3-Embedding-0.6B", "minilm:latest"):
        assert not answers_to(name, names), name


def test_the_loaded_engine_carries_its_names(minilm: Path, tmp_path: Path) -> None:
    copy = copy_of(minilm, tmp_path / "copy")
    settings = load_settings(
        {"model": str(copy), "backend": "cpu", "served_model_names": ["my-embedder"]},
        environ={"LOCALRANK_HOME": str(tmp_path / "home")},
    )
    engine = load_engine(settings)
    try:
        assert engine.info.model_id == MINILM_ID
        assert engine.info.names[:3] == ("my-embedder", MINILM_ID, "all-MiniLM-L6-v2")
        assert engine.info.to_dict()["names"] == list(engine.info.names)
    finally:
        engine.close()
