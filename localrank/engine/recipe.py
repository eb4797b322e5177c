"""Model-family rules: prompts, padding side, EOS, pooling, normalisation, max tokens.

Read from the model folder (config.json and the sentence-transformers files), never guessed:
a folder whose pooling cannot be determined is refused rather than served wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from localrank.engine.types import Recipe
from localrank.errors import ModelError

QWEN3_EOS = "<|endoftext|>"
QWEN3_QUERY_TEMPLATE = "Instruct: {task}\nQuery:{query}"
DECODER_FAMILIES = {"qwen3": "qwen3"}
ENCODER_FAMILIES = {"bert": "bert"}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model folder {path.parent} has no {path.name}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


def _st_modules(model_dir: Path) -> list[dict[str, Any]] | None:
    path = model_dir / "modules.json"
    return read_json(path) if path.is_file() else None


def _st_pooling(model_dir: Path, modules: list[dict[str, Any]]) -> str:
    pooling_module = next((m for m in modules if m["type"].endswith("Pooling")), None)
    if pooling_module is None:
        raise ModelError(f"{model_dir}/modules.json has no Pooling module")
    cfg = read_json(model_dir / pooling_module["path"] / "config.json")
    modes = [
        name for key, name in (
            ("pooling_mode_lasttoken", "last_token"),
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_cls_token", "cls"),
        ) if cfg.get(key)
    ]
    unsupported = [k for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                               "pooling_mode_weightedmean_tokens") if cfg.get(k)]
    if len(modes) != 1 or unsupported:
        raise ModelError(f"{model_dir}: unsupported pooling configuration {cfg}")
    for m in modules:
        if m["type"].endswith(("Dense", "LayerNorm", "WordEmbeddings", "CNN", "LSTM")):
            raise ModelError(f"{model_dir}: sentence-transformers module {m['type']} "
                             "is not supported")
    return modes[0]


def _st_query_prefix(model_dir: Path) -> str | None:
    path = model_dir / "config_sentence_transformers.json"
    if not path.is_file():
        return None
    prompts = read_json(path).get("prompts") or {}
    prefix = prompts.get("query")
    return prefix or None


def load_recipe(
    model_dir: Path,
    tokenizer: Tokenizer,
    *,
    max_tokens: int,
    default_instruction: str,
) -> Recipe:
    """The recipe for the model in `model_dir`. `max_tokens` caps the model's own limit."""
    config = read_json(model_dir / "config.json")
    model_type = config.get("model_type")
    modules = _st_modules(model_dir)

    if model_type in DECODER_FAMILIES:
        eos = tokenizer.token_to_id(QWEN3_EOS)
        if eos is None:
            raise ModelError(f"{model_dir}: tokenizer has no {QWEN3_EOS} token, which Qwen3 "
                             "embeddings pool on")
        limit = int(config.get("max_position_embeddings") or max_tokens)
        return Recipe(
            family=DECODER_FAMILIES[model_type],
            pooling="last_token",
            padding_side="left",
            normalize=True,
            dim=int(config["hidden_size"]),
            max_tokens=min(max_tokens, limit),
            pad_token_id=eos,
            eos_token_id=eos,
            query_template=QWEN3_QUERY_TEMPLATE,
            default_instruction=default_instruction,
        )

    if model_type in ENCODER_FAMILIES:
        if modules is None:
            raise ModelError(f"{model_dir}: an encoder model needs the sentence-transformers "
                             "modules.json to say how it pools; none found")
        pooling = _st_pooling(model_dir, modules)
        normalize = any(m["type"].endswith("Normalize") for m in modules)
        limit = int(config.get("max_position_embeddings") or 512)
        st_cfg = model_dir / "sentence_bert_config.json"
        if st_cfg.is_file():
            limit = min(limit, int(read_json(st_cfg).get("max_seq_length") or limit))
        pad_id = config.get("pad_token_id")
        if pad_id is None:
            pad_id = tokenizer.token_to_id("[PAD]")
        prefix = _st_query_prefix(model_dir)
        return Recipe(
            family=ENCODER_FAMILIES[model_type],
            pooling=pooling,
            padding_side="right",
            normalize=normalize,
            dim=int(config["hidden_size"]),
            max_tokens=min(max_tokens, limit),
            pad_token_id=int(pad_id or 0),
            eos_token_id=None,
            query_template=(prefix.replace("{", "{{").replace("}", "}}") + "{query}")
            if prefix else None,
            default_instruction=None,
        )

    raise ModelError(f"{model_dir}: model type {model_type!r} is not supported "
                     f"(supported: {', '.join([*DECODER_FAMILIES, *ENCODER_FAMILIES])})")
