"""What a model is called: the manifest of known models, recognising a model folder as one of
them, and every name a served model answers to.

Clients name the model they want in each request, and they name it the way their own world does:
the Hugging Face id (`Qwen/Qwen3-Embedding-0.6B`), a short alias, Ollama's library name
(`qwen3-embedding:0.6b`), or whatever the user typed into a settings page. A folder on disk says
none of that by itself: a Hugging Face cache snapshot is named after a commit hash, and a copy of
a known model can sit anywhere. So a folder is recognised by where it sits in the cache, by its
name, or by its content, and the served model then answers to all of its names.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from localrank.engine.model_files import read_config, weight_files
from localrank.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A name every daemon answers to and lists, whatever model it serves: client settings can keep
# one name across model changes, and clients that pick embedding models out of a list by their
# name (Obsidian Smart Connections keeps names containing "embed") find it.
STABLE_NAME = "localrank-embed"
# Names clients send when they mean "whatever this server runs": accepted, not listed.
GENERIC_NAMES = frozenset({"", "default", "localrank", STABLE_NAME})
# huggingface_hub's cache layout: <cache>/models--{org}--{name}/snapshots/{commit}/
_HF_CACHE_PREFIX = "models--"


def manifest() -> dict[str, dict[str, Any]]:
    """Known models (models/manifest.toml, shipped inside the package as data/manifest.toml)."""
    return _manifest()


@lru_cache(maxsize=1)
def _manifest() -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = _manifest_file()["models"]
    return models


@lru_cache(maxsize=1)
def _manifest_file() -> dict[str, Any]:
    text = resources.files("localrank").joinpath("data/manifest.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def native_families() -> tuple[str, ...]:
    """Embedding model_types with a native forward; others load through the generic path."""
    return tuple(_manifest_file()["families"]["native"])


def canonical_reranker_name(name: str) -> str:
    """Map a reranker alias (`qwen3-reranker-0.6b`) to its Hugging Face id; others pass through."""
    lowered = name.lower()
    for model_id, entry in _manifest_file().get("rerankers", {}).items():
        if lowered == model_id.lower() or lowered in entry.get("aliases", []):
            return str(model_id)
    return name


def canonical_name(name: str) -> str:
    """Map an alias (`qwen3-0.6b`, `minilm`) to its Hugging Face id; other names pass through."""
    lowered = name.lower()
    for model_id, entry in manifest().items():
        if lowered == model_id.lower() or lowered in entry.get("aliases", []):
            return model_id
    return name


def offline_package_path(entry: dict[str, Any]) -> Path | None:
    """The folder of a manifest entry's PyPI-installed copy (`offline_package`), if installed."""
    package = entry.get("offline_package")
    if not package:
        return None
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return Path(module.get_model_path())


def hf_cache_repo(path: Path) -> str | None:
    """`org/name` for a Hugging Face cache snapshot `.../models--org--name/snapshots/<commit>`."""
    parts = path.parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith(_HF_CACHE_PREFIX):
        return None
    # The hub forbids "--" inside repo ids, so the cache's separator is unambiguous.
    repo = parts[-3][len(_HF_CACHE_PREFIX) :].replace("--", "/")
    return repo if repo.count("/") == 1 and all(repo.split("/")) else None


def content_key(path: Path) -> str | None:
    """Identifies a model folder by content: config.json, tokenizer.json and the weight files'
    names and sizes. Equal keys mean the same model, wherever the folders are."""
    try:
        h = hashlib.sha256()
        for name in ("config.json", "tokenizer.json"):
            h.update(name.encode())
            h.update((path / name).read_bytes())
        for f in weight_files(path):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
    except (OSError, ModelError):
        return None
    return h.hexdigest()


@lru_cache(maxsize=16)
def _package_key(path: Path) -> str | None:
    return content_key(path)


def _config_fits(path: Path, entry: dict[str, Any]) -> bool:
    """The folder's config.json is of the entry's family and size (a folder named `minilm` that
    holds a Qwen3 is not all-MiniLM-L6-v2)."""
    try:
        cfg, _ = read_config(path)
    except ModelError:
        return False
    return cfg.get("model_type") == entry.get("family") and cfg.get("hidden_size") == entry.get(
        "dim"
    )


def identify_folder(path: Path) -> str | None:
    """The Hugging Face id of the model in `path`, when the folder is recognisably one: a known
    offline package (or a copy of one, by content), a Hugging Face cache snapshot, or a folder
    named after a known model's id or alias. None for anything else."""
    path = path.resolve()
    entries = manifest()
    packages = {
        model_id: found
        for model_id, entry in entries.items()
        if (found := offline_package_path(entry)) is not None
    }
    for model_id, package in packages.items():
        if package.resolve() == path:
            return model_id
    repo = hf_cache_repo(path)
    if repo is not None:
        return repo
    if packages:
        key = content_key(path)
        for model_id, package in packages.items():
            if key is not None and key == _package_key(package.resolve()):
                return model_id
    folder = path.name.lower()
    for model_id, entry in entries.items():
        known = {model_id.lower(), model_id.rsplit("/", 1)[-1].lower(), *entry.get("aliases", [])}
        if folder in known and _config_fits(path, entry):
            return model_id
    return None


def _manifest_entry_for(model_id: str) -> tuple[str, dict[str, Any]] | None:
    """The manifest entry of `model_id`, also when it is the entry's MLX conversion."""
    lowered = model_id.lower()
    for known_id, entry in manifest().items():
        if lowered == known_id.lower() or lowered == str(entry.get("mlx", "")).lower():
            return known_id, entry
    return None


def model_names(model_id: str, served: Sequence[str] = ()) -> tuple[str, ...]:
    """Every name the model `model_id` answers to, in the order lists show them: the names the
    user gave (`--served-model-name`), the model's id and its short form, the Hugging Face id and
    aliases of its manifest entry, and STABLE_NAME. No duplicates, ignoring case."""
    names: list[str] = [*served, model_id]
    if "/" in model_id:
        names.append(model_id.rsplit("/", 1)[-1])
    found = _manifest_entry_for(model_id)
    if found is not None:
        known_id, entry = found
        names += [known_id, known_id.rsplit("/", 1)[-1], *entry.get("aliases", [])]
    names.append(STABLE_NAME)
    return tuple(_unique(names))


def _unique(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for name in names:
        if name and name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    return out


def answers_to(requested: str, names: Sequence[str]) -> bool:
    """True when `requested` names the model (case-insensitive), or is a generic name."""
    lowered = requested.strip().lower()
    return lowered in GENERIC_NAMES or any(lowered == n.lower() for n in names)


def describe_names(names: Sequence[str]) -> str:
    """The names a 404 lists: `a, b, c`."""
    return ", ".join(json.dumps(n) for n in names)
