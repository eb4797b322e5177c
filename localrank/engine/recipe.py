"""Model-family rules: prompts, padding side, EOS, pooling, normalisation, max tokens.

Read from the model folder (config.json and the sentence-transformers files, through
model_files), never guessed:
a folder whose pooling cannot be determined is refused rather than served wrong.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from localrank.engine.model_files import (
    read_config,
    st_dimension,
    st_max_seq_length,
    st_modules,
    st_normalizes,
    st_pooling,
    st_query_prefix,
)
from localrank.engine.names import native_families
from localrank.engine.types import Recipe
from localrank.errors import ModelError

QWEN3_EOS = "<|endoftext|>"
QWEN3_QUERY_TEMPLATE = "Instruct: {task}\nQuery:{query}"
DECODER_FAMILIES = {"qwen3": "qwen3"}
ENCODER_FAMILIES = {"bert": "bert"}


def load_recipe(
    model_dir: Path,
    tokenizer: Tokenizer,
    *,
    max_tokens: int,
    default_instruction: str,
) -> Recipe:
    """The recipe for the model in `model_dir`. `max_tokens` caps the model's own limit."""
    config, _ = read_config(model_dir)
    model_type = config.get("model_type")
    modules = st_modules(model_dir)

    if model_type in DECODER_FAMILIES:
        eos = tokenizer.token_to_id(QWEN3_EOS)
        if eos is None:
            raise ModelError(
                f"{model_dir}: tokenizer has no {QWEN3_EOS} token, which Qwen3 embeddings pool on"
            )
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

    generic = model_type not in native_families() and modules is not None
    if model_type in ENCODER_FAMILIES or generic:
        if modules is None:
            raise ModelError(
                f"{model_dir}: an encoder model needs the sentence-transformers "
                "modules.json to say how it pools; none found"
            )
        pooling = st_pooling(model_dir, modules)
        normalize = st_normalizes(modules)
        limit = int(config.get("max_position_embeddings") or 512)
        st_limit = st_max_seq_length(model_dir)
        if st_limit is not None:
            limit = min(limit, st_limit)
        pad_id = config.get("pad_token_id")
        for pad_token in ("[PAD]", "<pad>"):
            if pad_id is None:
                pad_id = tokenizer.token_to_id(pad_token)
        prefix = st_query_prefix(model_dir)
        return Recipe(
            # An architecture with no native forward: served by the generic path (transformers),
            # right-padded as sentence-transformers pads it.
            family=ENCODER_FAMILIES.get(str(model_type), f"generic:{model_type}"),
            pooling=pooling,
            padding_side="right",
            normalize=normalize,
            dim=int(config["hidden_size"]) if not generic else st_dimension(model_dir, modules),
            max_tokens=min(max_tokens, limit),
            pad_token_id=int(pad_id or 0),
            eos_token_id=None,
            query_template=(prefix.replace("{", "{{").replace("}", "}}") + "{query}")
            if prefix
            else None,
            default_instruction=None,
        )

    raise ModelError(
        f"{model_dir}: model type {model_type!r} is not supported "
        f"(native: {', '.join([*DECODER_FAMILIES, *ENCODER_FAMILIES])}; any other architecture "
        "needs the sentence-transformers files, modules.json first, for the generic path)"
    )
