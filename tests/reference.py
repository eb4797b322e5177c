"""The model authors' recipes, run through transformers / sentence-transformers.

Every backend is checked against these. They are written the way the Qwen3-Embedding model card
writes them, not by reusing any localrank code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModel, AutoTokenizer

_cache: dict[str, tuple[object, object]] = {}


def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


def last_token_pool(last_hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size), sequence_lengths]


def qwen3_reference(
    model_dir: Path, texts: list[str], max_length: int = 8192, dtype: torch.dtype = torch.float32
) -> np.ndarray:
    """Qwen3-Embedding model card recipe: left padding, last-token pooling, L2 normalisation.
    `dtype`: the dtype transformers loads and runs the model in (the recipe as is)."""
    key = f"{model_dir}:{dtype}"
    if key not in _cache:
        tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        model = AutoModel.from_pretrained(str(model_dir), dtype=dtype).eval()
        _cache[key] = (tok, model)
    tokenizer, model = _cache[key]
    batch = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,  # type: ignore[operator]
        return_tensors="pt",
    )
    with torch.inference_mode():
        outputs = model(**batch)  # type: ignore[operator]
    embeddings = last_token_pool(outputs.last_hidden_state, batch["attention_mask"])
    return F.normalize(embeddings.float(), p=2, dim=1).numpy()


def qwen3_reference_ids(
    model_dir: Path, texts: list[str], max_length: int = 8192
) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    return [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


def sentence_transformers_reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    key = "st:" + str(model_dir)
    if key not in _cache:
        _cache[key] = (SentenceTransformer(str(model_dir), device="cpu"), None)
    model = _cache[key][0]
    return np.asarray(model.encode(texts, normalize_embeddings=True))  # type: ignore[attr-defined]
