"""Reading a model folder: config.json, safetensors shards and weight keys, and the
sentence-transformers files.

Framework-free (no torch, no mlx imports) so the recipe and both backends read a folder the same
way, and every error names the file at fault.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from localrank.errors import ModelError

log = logging.getLogger(__name__)

T = TypeVar("T")
# Keys a checkpoint may carry that no embedding forward pass reads (LM / pretraining heads,
# buffers).
IGNORED_PREFIXES = ("lm_head.", "pooler.", "cls.")
IGNORED_SUFFIXES = ("position_ids", "token_type_ids", "rotary_emb.inv_freq")
# sentence-transformers modules that change the vectors and that no backend here implements.
UNSUPPORTED_ST_MODULES = ("Dense", "LayerNorm", "WordEmbeddings", "CNN", "LSTM")


# ----------------------------------------------------------------------------- config.json


def read_model_json(path: Path) -> Any:
    """A JSON file of a model folder, or ModelError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable: {e}") from e


def read_config(model_dir: Path) -> tuple[dict[str, Any], Path]:
    """config.json as a dict, and its path (for errors about its values)."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelError(f"{path}: missing (not a model folder?)")
    cfg = read_model_json(path)
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: not a JSON object")
    return cfg, path


def model_type_of(
    cfg: dict[str, Any], source: Path, supported: Collection[str], backend: str
) -> str:
    """config.json's model_type, refused unless it is one of the families `backend` supports."""
    model_type = cfg.get("model_type")
    if model_type not in supported:
        raise ModelError(
            f"{source}: model_type {model_type!r} is not supported by the {backend} "
            f"backend (supported: {', '.join(supported)})"
        )
    return str(model_type)


def hidden_size_of(cfg: dict[str, Any], source: Path, dim: int) -> int:
    """config.json's hidden_size, refused unless it is the recipe's vector size."""
    hidden = int(cfg.get("hidden_size", -1))
    if hidden != dim:
        raise ModelError(f"{source}: hidden_size {hidden} != recipe dim {dim}")
    return hidden


def qwen3_rope_theta(cfg: dict[str, Any], source: Path) -> float:
    """rope_theta the way transformers 5 resolves it: `rope_parameters` (or legacy
    `rope_scaling`) first, then the top-level key. Absent from both is an error: transformers
    would default to 1e4 while every published Qwen3 uses 1e6, and guessing silently is exactly
    the loader bug this backend exists to avoid."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ModelError(f"{source}: RoPE type {rope_type!r} is not supported (only 'default')")
    top, nested = cfg.get("rope_theta"), params.get("rope_theta")
    if top is not None and nested is not None and float(top) != float(nested):
        log.warning(
            "%s: rope_theta=%s and rope_parameters.rope_theta=%s disagree; using %s as "
            "transformers does",
            source,
            top,
            nested,
            nested,
        )
    theta = nested if nested is not None else top
    if theta is None:
        raise ModelError(
            f"{source}: no rope_theta (neither top-level nor under rope_parameters); "
            "add the model's value (1000000.0 for published Qwen3) to config.json"
        )
    return float(theta)


# ----------------------------------------------------------------------------- safetensors


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards an index names, or the single file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{index}: unreadable shard index: {e}") from e
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise ModelError(f"{f}: shard listed in {index.name} is missing")
        return files
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(
            f"{model_dir}: no model.safetensors (or shards) found; only safetensors "
            "weights are supported"
        )
    return files


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor of a safetensors file lies: dtype name ("BF16"...), shape, and its byte
    range in the file (absolute offsets)."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


# A safetensors header larger than this is not a checkpoint (the format's own reference caps it).
MAX_HEADER_BYTES = 100_000_000


def safetensors_index(path: Path) -> dict[str, StoredTensor]:
    """The tensors a safetensors file holds, read from its header alone (8-byte little-endian
    length, then JSON): nothing of the data is read, so a caller can map it lazily."""
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            raw = f.read(8)
            if len(raw) != 8:
                raise ModelError(f"{path}: not a safetensors file (shorter than its header)")
            n = int.from_bytes(raw, "little")
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise ModelError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise ModelError(f"{path}: safetensors header is not a JSON object")
    out: dict[str, StoredTensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in entry["data_offsets"])
            stored = StoredTensor(
                str(entry["dtype"]),
                tuple(int(d) for d in entry["shape"]),
                8 + n + start,
                8 + n + end,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{path}: malformed header entry for {name!r}: {e}") from e
        if not 8 + n <= stored.start <= stored.end <= size:
            raise ModelError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        out[name] = stored
    return out


def normalise_keys(
    weights: dict[str, T], origin: dict[str, Path], prefix: str
) -> tuple[dict[str, T], dict[str, Path]]:
    """Strip the "model." / "bert." prefix, drop heads and buffers, rename gamma/beta."""
    out: dict[str, T] = {}
    out_origin: dict[str, Path] = {}
    for key, value in weights.items():
        name = key.removeprefix(prefix)
        if name.startswith(IGNORED_PREFIXES) or name.endswith(IGNORED_SUFFIXES):
            continue
        # Old BERT checkpoints name LayerNorm parameters gamma / beta.
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        out[name] = value
        out_origin[name] = origin[key]
    return out, out_origin


def check_keys(
    present: Collection[str],
    expected: Collection[str],
    origin: Mapping[str, Path],
    model_dir: Path,
    *,
    refused: tuple[str, str] | None = None,
) -> None:
    """Every expected weight present and nothing unexplained, or ModelError naming the file.

    `refused` is (key suffix, reason): an unexpected key with that suffix is reported first,
    with the reason (the torch backend uses it to name MLX-quantised checkpoints).
    """
    missing = sorted(set(expected) - set(present))
    if missing:
        files = ", ".join(sorted({str(p) for p in origin.values()})) or str(model_dir)
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ModelError(f"{files}: missing weights {', '.join(missing[:5])}{more}")
    unexpected = sorted(set(present) - set(expected))
    if not unexpected:
        return
    if refused is not None:
        suffix, reason = refused
        k = next((k for k in unexpected if k.endswith(suffix)), None)
        if k is not None:
            raise ModelError(f"{origin[k]}: {reason} ({k!r})")
    k = unexpected[0]
    raise ModelError(
        f"{origin[k]}: unexpected weight {k!r} (and {len(unexpected) - 1} more); "
        "config.json does not describe these weights"
    )


# ------------------------------------------------------------------- sentence-transformers


def st_modules(model_dir: Path) -> list[dict[str, Any]] | None:
    """The sentence-transformers pipeline (modules.json), or None when the folder has none."""
    path = model_dir / "modules.json"
    return read_model_json(path) if path.is_file() else None


def st_pooling(model_dir: Path, modules: list[dict[str, Any]]) -> str:
    """The pooling mode ("last_token" | "mean" | "cls") the Pooling module's config sets.

    Refused when it sets none, several, or one we do not implement, and when the pipeline has a
    module that would change the vectors after pooling.
    """
    pooling_module = next((m for m in modules if m["type"].endswith("Pooling")), None)
    if pooling_module is None:
        raise ModelError(f"{model_dir}/modules.json has no Pooling module")
    cfg = read_model_json(model_dir / pooling_module["path"] / "config.json")
    modes = [
        name
        for key, name in (
            ("pooling_mode_lasttoken", "last_token"),
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_cls_token", "cls"),
        )
        if cfg.get(key)
    ]
    unsupported = [
        k
        for k in (
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
        )
        if cfg.get(k)
    ]
    if len(modes) != 1 or unsupported:
        raise ModelError(f"{model_dir}: unsupported pooling configuration {cfg}")
    for m in modules:
        if m["type"].endswith(UNSUPPORTED_ST_MODULES):
            raise ModelError(
                f"{model_dir}: sentence-transformers module {m['type']} is not supported"
            )
    return modes[0]


def st_dimension(model_dir: Path, modules: list[dict[str, Any]]) -> int:
    """The Pooling module's word_embedding_dimension: the vector size, whatever config.json
    calls its hidden size (DistilBERT: `dim`)."""
    pooling_module = next((m for m in modules if m["type"].endswith("Pooling")), None)
    if pooling_module is None:
        raise ModelError(f"{model_dir}/modules.json has no Pooling module")
    cfg = read_model_json(model_dir / pooling_module["path"] / "config.json")
    dim = cfg.get("word_embedding_dimension")
    if not isinstance(dim, int) or dim <= 0:
        raise ModelError(f"{model_dir}/{pooling_module['path']}: no word_embedding_dimension")
    return dim


def st_normalizes(modules: list[dict[str, Any]]) -> bool:
    """Whether the pipeline ends in a Normalize module (unit-length vectors)."""
    return any(m["type"].endswith("Normalize") for m in modules)


def st_query_prefix(model_dir: Path) -> str | None:
    """The "query" prompt of config_sentence_transformers.json, or None (none, or empty)."""
    path = model_dir / "config_sentence_transformers.json"
    if not path.is_file():
        return None
    prompts = read_model_json(path).get("prompts") or {}
    prefix = prompts.get("query")
    return prefix or None


def st_max_seq_length(model_dir: Path) -> int | None:
    """sentence_bert_config.json's max_seq_length, or None when the folder does not set one."""
    path = model_dir / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = read_model_json(path).get("max_seq_length")
    return int(value) if value else None


def weight_summary(model_dir: Path) -> tuple[int, int]:
    """(parameters, bytes) of a checkpoint's weight files, read from the safetensors headers
    alone (a few kilobytes each), for model listings. Quantised weights count packed values."""
    parameters = size = 0
    for f in weight_files(model_dir):
        try:
            with f.open("rb") as fh:
                length = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(length))
            size += f.stat().st_size
        except (OSError, ValueError) as e:
            raise ModelError(f"{f}: unreadable safetensors header: {e}") from e
        for name, meta in header.items():
            if name != "__metadata__":
                parameters += math.prod(meta.get("shape", []))
    return parameters, size
